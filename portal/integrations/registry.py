"""Which adapter speaks for each vendor, scanner or practice management system: one explicit table,
so adding a vendor is one line here."""
from __future__ import annotations

from portal.integrations.base import Adapter
from portal.integrations.http import VendorError
from portal.integrations.itero.adapter import IteroAdapter
from portal.integrations.medit.adapter import MeditAdapter
from portal.integrations.models import ScannerIntegration
from portal.integrations.opendental.adapter import OpenDentalAdapter
from portal.integrations.threeshape.adapter import FolderAdapter
from portal.integrations.vendor import Vendor

ADAPTERS: dict[Vendor, type[Adapter]] = {
    Vendor.ITERO: IteroAdapter,
    Vendor.MEDIT: MeditAdapter,
    Vendor.THREESHAPE: FolderAdapter,
    Vendor.OPENDENTAL: OpenDentalAdapter,  # the first PMS; Dentrix, Eaglesoft, Curve would sit here
}


def adapter_for(integration: ScannerIntegration) -> Adapter:
    cls = ADAPTERS.get(integration.vendor)
    if cls is None:
        raise VendorError(f"{integration.vendor.label} is not supported yet.", "refused")
    return cls(integration)


def supported() -> list[Vendor]:
    return [v for v in Vendor if v in ADAPTERS]
