"""The line client's JSON output for group events, unknown events and a bad user id."""

from __future__ import annotations

import subprocess
import sys

from tether.cli.line_client import event_to_json
from tether.client import events as ev


def test_group_events_formatted() -> None:
    group = ev.Group("team", "g:team", "alice", 3)
    changed = event_to_json(ev.GroupsChanged(joined=[group], left=["old"], deleted=["old"]))
    assert changed == {
        "event": "groups",
        "joined": [{"group": "team", "owner": "alice", "members": 3}],
        "left": ["old"],
        "deleted": ["old"],
    }
    added = event_to_json(ev.GroupEvent("team", "g:team", 4, "members_added", "alice", ["bob"], 1))
    assert added == {
        "event": "group_event",
        "group": "team",
        "kind": "members_added",
        "by": "alice",
        "users": ["bob"],
        "sequence": 4,
    }
    online = event_to_json(ev.GroupOnline("team", online=2, member_count=150))
    assert online == {"event": "group_online", "group": "team", "online": 2, "members": 150}


def test_unknown_event_still_printed() -> None:
    class Newer:
        pass

    assert event_to_json(Newer()) == {"event": "Newer"}  # type: ignore[arg-type]


def test_invalid_user_reports_error(tmp_path: object) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tether", "client", "bad user!", "--data-dir", str(tmp_path)],
        input="", capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "may contain only" in result.stdout
