"""The case page's panels are named blocks of cases/show.html whose data the case view gathers from
the feature that owns it; no blueprint hands templates functions that query the database."""
from __future__ import annotations

from portal.cases.lifecycle import Status
from portal.cases.routes import _panels
from tests import factories

PANELS = ("dispatch_panel", "itero_panel", "pms_panel", "scans_panel", "messages_panel")
# What blueprints used to register for the case page's templates to call (each ran SQL there).
GONE = ("case_dispatch", "order_notices", "api_order", "retry_form", "itero_panel", "rx_form", "rescan_form",
        "lab_link_of", "lab_thread", "message_deliveries", "case_scans", "pms_panel")


def test_each_panel_is_a_named_block_of_the_case_page(app):
    blocks = app.jinja_env.get_template("cases/show.html").blocks
    assert set(PANELS) <= set(blocks)


def test_no_template_global_or_context_processor_feeds_the_case_page(app):
    with app.test_request_context("/"):
        context: dict = {}
        for processors in app.template_context_processors.values():
            for processor in processors:
                context.update(processor())
    provided = set(app.jinja_env.globals) | set(context)
    assert not provided & set(GONE)


def test_the_case_view_gathers_every_panel_from_its_owner(app, world):
    case = factories.case(world, Status.DRAFT)
    with app.test_request_context("/"):
        panels = _panels(case)
    assert set(PANELS) <= set(panels)
    assert panels["dispatch_panel"].dispatch is None and panels["scans_panel"] == []
    assert panels["messages_panel"].thread == []


def test_the_messages_panel_alone_after_an_htmx_post(client, login, world):
    case = factories.case(world, Status.SENT, lab=world.labs["manual"])
    login()
    response = client.post(f"/cases/{case.id}/messages", {"text": "Is the fit photo clear?"}, htmx="lab-messages")
    html = response.get_data(as_text=True)
    assert response.status_code == 200 and "Is the fit photo clear?" in html
    assert html.lstrip().startswith('<section class="panel messages-panel" id="lab-messages"')
    assert "<html" not in html
