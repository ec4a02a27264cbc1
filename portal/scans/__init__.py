"""Scans, whichever outside system brought them: the inbox where they are matched to a patient and
join a case (services.py, queries.py, routes.py), uploads (uploads.py), reading mesh files (mesh/),
and the document store of uploaded files with the labs' download links (store.py, links.py)."""
