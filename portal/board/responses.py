"""The board's answer to a change made on it, for the views of any feature (a card's move is the
case view's, a bulk action the board's): not a view itself, so views need not import each other."""
from __future__ import annotations

from flask import current_app, g, request

from portal.board import services
from portal.board.services import Filters
from portal.web import render


def board_response(code: int, message: str | None = None, level: str = "error", **extra):
    """The board's columns through the filters of the query string, with a toast: the answer
    to a change made from the board (a move, a bulk action, an undo)."""
    filters = Filters.from_args(request.args)
    columns = services.load_board(g.practice.id, filters, current_app.config["BOARD_COLUMN_LIMIT"])
    return render("board/index.html", "columns", code=code, columns=columns, filters=filters,
                  stamp=services.board_stamp(g.practice.id), phases=services.PHASES, toast=message,
                  toast_level=level, **extra)
