"""Two browser sessions share one cached Workspace: one session's choices must never reach the
other's results (issue #19's bug, also #23 case 8).

Session B, with "Stop early on hopeless plans" ticked, evaluates the trade-off: some plans stop
early (so the check below can fail). Session A unticks the box and evaluates the same plans on the
same images while B reruns its Trade-off page again and again (every run of that page used to
write B's choice onto the shared Workspace, and A then got B's stopped-early numbers). A's table
must hold every plan measured in full."""
from __future__ import annotations

import threading

import pytest
from apptest_support import assert_ran_cleanly, errors, new_app, open_page

pytestmark = [pytest.mark.data, pytest.mark.slow]

IMAGES = 100  # early stop looks every 50 images: two looks, so hopeless plans do stop
STEPS = 8


def _tradeoff(val_dir, early_stop: bool):
    at = new_app(data=str(val_dir), limit=IMAGES)
    open_page(at, "tradeoff")
    assert_ran_cleanly(at)
    at.number_input(key="sweep_steps").set_value(STEPS)
    at.checkbox(key="early_stop").set_value(early_stop)
    at.run()
    assert_ran_cleanly(at)
    return at


def _notes(at) -> list:
    return list(at.dataframe[0].value["note"])


def test_one_sessions_early_stop_never_reaches_another_session(val_dir):
    b = _tradeoff(val_dir, early_stop=True)
    b.button(key="run_sweep").click().run()
    assert_ran_cleanly(b)
    assert any("stopped early" in n for n in _notes(b))  # hopeless plans do stop early for B

    b.number_input(key="sweep_steps").set_value(STEPS + 1)  # a grid B has not evaluated: its page only looks
    b.run()
    a = _tradeoff(val_dir, early_stop=False)
    a_done = threading.Event()
    b_runs = []

    def keep_rerunning_b():
        while not a_done.is_set():
            b.run()
            b_runs.append(len(b.exception))

    other = threading.Thread(target=keep_rerunning_b, daemon=True)
    other.start()
    try:
        a.button(key="run_sweep").click().run()
    finally:
        a_done.set()
        other.join(timeout=300)
    assert_ran_cleanly(a)
    assert not errors(a)
    assert b_runs and not any(b_runs), "session B must have rerun its page while A evaluated"
    notes = _notes(a)
    assert len(notes) == 2 + STEPS
    assert not any("stopped early" in n for n in notes), notes
    assert set(a.dataframe[0].value["images"]) == {IMAGES}
