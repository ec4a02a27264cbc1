"""How Lab Manager talks to every outside system (scanner vendors today): an adapter per vendor
behind one interface (base.py) found through an explicit registry (registry.py), encrypted
credentials (portal/keyring.py), the outbound HTTP client with its host allow-list and error type
(http.py), OAuth tokens (oauth.py), vendor notifications (hooks.py), polling with cursors and
schedules (sync.py), and the admin pages (routes.py, services.py, forms.py). One subpackage per
vendor: itero/, medit/, threeshape/."""
