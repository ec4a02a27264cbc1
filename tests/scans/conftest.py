"""The scans' tests share the outside systems' fixtures (the vendor sandbox, a live app server, the
queue, the document store, uploads)."""
from tests.integrations.conftest import *  # noqa: F401,F403
from tests.integrations.conftest import _clean  # noqa: F401
