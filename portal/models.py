"""Imports every feature's models so SQLAlchemy and Alembic see the whole schema."""
from portal.ack.models import AckLink  # noqa: F401
from portal.admin.users.models import PasswordLink  # noqa: F401
from portal.audit.models import AuditEvent, AuditHead  # noqa: F401
from portal.auth.models import UserSession  # noqa: F401
from portal.cases.models import CaseItem, Counter, LabCase  # noqa: F401
from portal.dispatch.models import Dispatch, LabEvent  # noqa: F401
from portal.integrations.itero.models import RescanRequest, ScanRequest  # noqa: F401
from portal.integrations.models import ScannerIntegration, VendorEvent, integration_lab  # noqa: F401
from portal.labs.models import Lab, LabSecret, LabService  # noqa: F401
from portal.mail.models import MailMessage  # noqa: F401
from portal.messages.models import LabMessage  # noqa: F401
from portal.people.models import Appointment, Patient, Provider  # noqa: F401
from portal.practices.models import Membership, Organization, Practice, PracticeClosure, User  # noqa: F401
from portal.scans.models import Scan, ScanFile  # noqa: F401
