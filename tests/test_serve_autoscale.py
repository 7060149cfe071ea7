"""`tandem serve --autoscale`: its flags, the pure adaptation of the planner to one
machine (signals from two scrape rounds, what is carried out, what is logged),
and end to end on CPU: real workers, router and planner replaying a trace whose
mix shifts from prompt-heavy to output-heavy."""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import re
import selectors
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tandem.launch.autoscale import Autoscaler, Member
from tandem.launch.scaling import (
    HELD,
    ROUTER,
    AutoscaleConfig,
    LogState,
    Round,
    Scrape,
    actions,
    log_lines,
    parsed,
    window,
)
from tandem.planner import Decision, Flip
from tandem.planner.scrape import parse
from tandem.serve_command import ServeConfig, config_from_args, register

ROOT = Path(__file__).resolve().parent.parent
TRACE = ROOT / "tests" / "data" / "shifting-trace.csv"


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    return parser.parse_args(["serve", *argv])


# ----- flags ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("argv", "split"),
    [
        ([], (1, 1)),
        (["--prefill", "2", "--decode", "3"], (2, 3)),
        (["--autoscale"], (1, 1)),
        (["--autoscale", "--workers", "4"], (2, 2)),
        (["--autoscale", "--workers", "5"], (2, 3)),
        (["--autoscale", "--workers", "4", "--prefill", "3"], (3, 1)),
        (["--autoscale", "--workers", "4", "--decode", "3"], (1, 3)),
        (["--autoscale", "--prefill", "2", "--decode", "2"], (2, 2)),
    ],
)
def test_initial_split(argv: list[str], split: tuple[int, int]) -> None:
    config = config_from_args(_args(*argv))
    assert (config.prefill, config.decode) == split
    assert (config.autoscale is not None) == ("--autoscale" in argv)


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--workers", "4"], "--workers"),
        (["--autoscale", "--workers", "1"], "--workers"),
        (["--autoscale", "--workers", "4", "--prefill", "1", "--decode", "1"], "--workers"),
        (["--autoscale", "--workers", "3", "--prefill", "0"], "--prefill"),
        (["--autoscale", "--workers", "3", "--decode", "3"], "--prefill"),
        (["--autoscale", "--ttft-slo", "0"], "--ttft-slo"),
        (["--autoscale", "--tpot-slo", "-1"], "--tpot-slo"),
        (["--autoscale", "--target-busy", "1.5"], "--target-busy"),
        (["--autoscale", "--target-kv-usage", "0"], "--target-kv-usage"),
        (["--autoscale", "--tolerance", "1"], "--tolerance"),
        (["--autoscale", "--scale-interval", "0"], "--scale-interval"),
        (["--autoscale", "--scale-up-window", "-1"], "--scale-up-window"),
        (["--autoscale", "--scale-down-window", "nan"], "--scale-down-window"),
        (["--autoscale", "--cooldown", "-5"], "--cooldown"),
        (["--autoscale", "--min-requests", "-1"], "--min-requests"),
        (["--autoscale", "--flip-timeout", "0"], "--flip-timeout"),
        (["--autoscale", "--launcher", "ray"], "--autoscale"),
    ],
)
def test_bad_flags_are_named(argv: list[str], flag: str) -> None:
    with pytest.raises(ValueError, match=re.escape(flag)):
        config_from_args(_args(*argv))


def test_the_policy_has_the_flags_and_a_budget_of_n_with_one_worker_per_role() -> None:
    config = config_from_args(
        _args("--autoscale", "--workers", "4", "--tpot-slo", "0.05", "--cooldown", "7")
    )
    assert config.autoscale is not None
    policy = config.autoscale.policy(config.workers)
    assert policy.max_gpus == 4 and policy.tpot_slo_s == 0.05 and policy.cooldown_s == 7
    assert policy.prefill.min_replicas == 1 and policy.decode.min_replicas == 1
    assert policy.ttft_slo_s is None and policy.scale_down_window_s == 120.0  # Policy's defaults


def test_serve_config_checks_autoscale_itself() -> None:
    with pytest.raises(ValueError, match="--prefill"):
        ServeConfig(prefill=0, decode=2, autoscale=AutoscaleConfig())


# ----- signals from two scrape rounds ---------------------------------------------
def _worker_text(role: str, busy: float, used: int = 0, draining: bool = False) -> str:
    roles = "\n".join(
        f'tandem_worker_role{{role="{r}"}} {1.0 if r == role else 0.0}'
        for r in ("prefill", "decode", "both")
    )
    return (
        f"{roles}\ntandem_worker_busy_seconds_total {busy}\n"
        f"tandem_worker_kv_blocks_used {used}\ntandem_worker_kv_blocks_total 100\n"
        f"tandem_worker_draining {1.0 if draining else 0.0}\n"
    )


ROUTER_TEXT = "tandem_router_queue_depth 0\n"


def _round(at: float, texts: dict[str, str], errors: dict[str, str] | None = None) -> Round:
    return parsed(Scrape(at, texts, errors or {}))


def test_window_turns_two_rounds_into_rates() -> None:
    a = _round(
        0.0,
        {
            "w0": _worker_text("prefill", 1.0),
            "w1": _worker_text("decode", 0.0, 10),
            ROUTER: ROUTER_TEXT,
        },
    )
    b = _round(
        2.0,
        {
            "w0": _worker_text("prefill", 2.5),
            "w1": _worker_text("decode", 0.2, 40),
            ROUTER: ROUTER_TEXT,
        },
    )
    s = window(a, b, ("w0", "w1"))
    assert s.missing == () and s.window_s == 2.0
    by = {w.name: w for w in s.workers}
    assert by["w0"].role == "prefill" and by["w0"].busy == pytest.approx(0.75)
    assert by["w1"].role == "decode" and by["w1"].kv_usage == pytest.approx(0.4)


@pytest.mark.parametrize(
    ("before", "after", "missing"),
    [
        ({"w0", "w1", ROUTER}, {"w0", ROUTER}, ("w1",)),  # a worker stopped answering
        ({"w0", ROUTER}, {"w0", "w1", ROUTER}, ("w1",)),  # back, but no previous round yet
        ({"w0", "w1", ROUTER}, {"w0", "w1"}, (ROUTER,)),  # the router is down
    ],
)
def test_window_names_what_did_not_answer(before: set, after: set, missing: tuple) -> None:
    texts = {
        "w0": _worker_text("prefill", 0.0),
        "w1": _worker_text("decode", 0.0),
        ROUTER: ROUTER_TEXT,
    }
    a = _round(0.0, {k: v for k, v in texts.items() if k in before})
    b = _round(1.0, {k: v for k, v in texts.items() if k in after})
    assert window(a, b, ("w0", "w1")).missing == missing


def test_window_treats_a_page_that_is_not_prometheus_text_as_missing() -> None:
    good = {"w0": _worker_text("prefill", 0.0), ROUTER: ROUTER_TEXT}
    a = _round(0.0, good)
    b = _round(1.0, {**good, "w0": "<html>oops"})
    assert "w0" in b.errors and window(a, b, ("w0",)).missing == ("w0",)


def test_window_treats_a_page_without_the_role_gauge_as_missing() -> None:
    a = _round(0.0, {"w0": "tandem_worker_busy_seconds_total 1\n", ROUTER: ROUTER_TEXT})
    b = _round(1.0, {"w0": "tandem_worker_busy_seconds_total 2\n", ROUTER: ROUTER_TEXT})
    assert window(a, b, ("w0",)).missing == ("w0",)


# ----- what serve does with a decision, and what it logs -------------------------------
def _decision(
    action: str = "none", reason: str = "pool at its target; pressure x", **kw: object
) -> Decision:
    return Decision(action, reason, 1, 1, **kw)  # type: ignore[arg-type]


def test_actions_carry_out_flips_and_hold_starts_and_removals() -> None:
    flip = Flip("worker-1", "decode", "prefill")
    assert actions(_decision("flip", flips=(flip,))).flips == (flip,)
    assert actions(_decision("flip", flips=(flip,))).held == ""
    held = actions(_decision("scale", remove=("worker-2",), add_decode=1))
    assert held.flips == () and "remove worker-2" in held.held and "1 decode" in held.held


FLIP_REASON = "prefill 1->2, decode 2->1: flip worker-1 decode->prefill; pressure prefill 1.9"


@pytest.mark.parametrize(
    ("before", "decision", "held", "lines", "after"),
    [
        # a flip: one line, the planner's reason without repeating the flip
        (
            LogState("ok"),
            _decision("flip", FLIP_REASON, flips=(Flip("worker-1", "decode", "prefill"),)),
            "",
            [
                "autoscale: flip worker-1 decode->prefill: prefill 1->2, decode 2->1; pressure prefill 1.9"
            ],
            LogState("ok"),
        ),
        # nothing new: nothing logged, also at the start of a run
        (LogState("ok"), _decision(), "", [], LogState("ok")),
        (LogState(), _decision(), "", [], LogState("ok")),
        # degraded: once when it begins, then silence, then "resumed"
        (
            LogState("ok"),
            _decision("degraded", "signal source down: router; no scaling decision"),
            "",
            ["autoscale: degraded: signal source down: router; no scaling decision"],
            LogState("degraded: signal source down: router; no scaling decision"),
        ),
        (
            LogState("degraded: signal source down: router; no scaling decision"),
            _decision("degraded", "signal source down: router; no scaling decision"),
            "",
            [],
            LogState("degraded: signal source down: router; no scaling decision"),
        ),
        (
            LogState("degraded: signal source down: router; no scaling decision"),
            _decision(),
            "",
            ["autoscale: resumed: pool at its target; pressure x"],
            LogState("ok"),
        ),
        # a cooldown whose seconds count down is one state
        (
            LogState("ok"),
            _decision("hold", "cooldown: 12s left since the last change; pressure x"),
            "",
            ["autoscale: hold: cooldown: 12s left since the last change; pressure x"],
            LogState("hold: cooldown"),
        ),
        (
            LogState("hold: cooldown"),
            _decision("hold", "cooldown: 3s left since the last change; pressure y"),
            "",
            [],
            LogState("hold: cooldown"),
        ),
        # a start or removal serve does not carry out: one line, whichever worker it names
        (
            LogState("ok"),
            _decision("scale", "prefill 1->1, decode 2->1: drain and remove worker-2"),
            "planner asks to remove worker-2; tandem serve keeps its workers",
            [
                "autoscale: hold: planner asks to remove worker-2; tandem serve keeps its "
                "workers: prefill 1->1, decode 2->1: drain and remove worker-2"
            ],
            LogState(HELD),
        ),
        (
            LogState(HELD),
            _decision("scale", "prefill 1->1, decode 2->1: drain and remove worker-1"),
            "planner asks to remove worker-1; tandem serve keeps its workers",
            [],
            LogState(HELD),
        ),
        # limited: when it begins and when it ends, not while the asks move
        (
            LogState("ok"),
            _decision(limited="maxGPUs=3 binds: the signals ask for 3 prefill + 1 decode"),
            "",
            ["autoscale: limited: maxGPUs=3 binds: the signals ask for 3 prefill + 1 decode"],
            LogState("ok", "maxGPUs=3 binds"),
        ),
        (
            LogState("ok", "maxGPUs=3 binds"),
            _decision(limited="maxGPUs=3 binds: the signals ask for 5 prefill + 1 decode"),
            "",
            [],
            LogState("ok", "maxGPUs=3 binds"),
        ),
        (
            LogState("ok", "maxGPUs=3 binds"),
            _decision(),
            "",
            ["autoscale: no longer limited"],
            LogState("ok"),
        ),
    ],
)
def test_log_lines(
    before: LogState, decision: Decision, held: str, lines: list[str], after: LogState
) -> None:
    assert log_lines(before, decision, held) == (after, lines)


def test_parse_of_a_real_worker_page_finds_the_role() -> None:
    snap = parse(_worker_text("decode", 3.0, 7))
    assert snap.value("tandem_worker_role", role="decode") == 1.0


# ----- end to end on CPU ----------------------------------------------------------------
PHASE_S = json.loads(TRACE.with_suffix(".json").read_text())["spec"]["phase_s"]
SCALE_INTERVAL_S, UP_S, DOWN_S, COOLDOWN_S = 2.0, 4.0, 6.0, 6.0
WORKERS = 3
STARTED = re.compile(r"started (worker-\d+) \(pid \d+\): tandem worker .* --metrics-port (\d+)")
FLIP = re.compile(r"autoscale: flip (worker-\d+) (\w+)->(\w+):")


@dataclass
class Sampler:
    """Polls every worker's own /metrics: (time, roles by worker, KV used by worker)."""

    ports: dict[str, int]
    router_port: int
    samples: list[tuple[float, dict[str, str], dict[str, float]]] = field(default_factory=list)
    router: list[tuple[float, list[str]]] = field(default_factory=list)  # roles it routes by
    stop: threading.Event = field(default_factory=threading.Event)

    def page(self, name: str) -> str:
        url = f"http://127.0.0.1:{self.ports[name]}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.read().decode()

    def sample(self) -> tuple[float, dict[str, str], dict[str, float]]:
        roles, used = {}, {}
        for name in self.ports:
            snap = parse(self.page(name))
            roles[name] = next(
                r
                for r in ("prefill", "decode", "both")
                if snap.value("tandem_worker_role", role=r) == 1
            )
            used[name] = snap.value("tandem_worker_kv_blocks_used") or 0.0
        return time.monotonic(), roles, used

    def run(self) -> None:
        while not self.stop.wait(0.5):
            try:
                self.samples.append(self.sample())
                self.router.append((time.monotonic(), _router_roles(self.router_port)))
            except OSError:
                continue  # one missed sample; the next comes in half a second

    def count(self, role: str, since: float, until: float) -> list[int]:
        return [
            sum(r == role for r in roles.values())
            for t, roles, _ in self.samples
            if since <= t < until
        ]


def _switches(sampler: Sampler) -> dict[str, float]:
    total: dict[str, float] = {}
    for name in sampler.ports:
        snap = parse(sampler.page(name))
        for role in ("prefill", "decode"):
            n = snap.value("tandem_worker_role_switches_total", to_role=role) or 0.0
            total[role] = total.get(role, 0.0) + n
    return total


def _router_roles(port: int) -> list[str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as resp:
        return sorted(w["role"] for w in json.load(resp)["workers"] if w["up"])


def _read_line(proc: subprocess.Popen[str], timeout_s: float) -> str:
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout_s):
            raise AssertionError(f"tandem serve printed nothing in {timeout_s:.0f}s")
    return proc.stdout.readline()


def _replay(port: int, out: Path) -> dict:
    from tandem.loadgen.bench import BenchConfig, run

    cfg = BenchConfig(url=f"http://127.0.0.1:{port}", out=str(out), trace=str(TRACE), timeout_s=120)
    return asyncio.run(asyncio.wait_for(run(cfg), timeout=240))


@pytest.mark.timeout(420)
def test_serve_autoscale_follows_a_shift_from_prompt_heavy_to_output_heavy(tmp_path: Path) -> None:
    from tandem.launch.spec import free_port

    port = free_port()
    log_path = tmp_path / "serve.log"
    cmd = [
        "serve", "--device", "cpu", "--port", str(port), "--autoscale", "--workers", str(WORKERS),
        # Pools large enough that no request is ever refused for KV, with a KV target low
        # enough that the output-heavy phase shows clearly as decode pressure (~1.4-1.7
        # measured on 2 cores), and a busy target the prompt-heavy phase is well above
        # (prefill busy ~0.5-0.6 on one worker: pressure ~1.7-1.9).
        "--num-kv-blocks", "512", "--target-kv-usage", "0.2", "--target-busy", "0.15",
        "--scale-interval", str(SCALE_INTERVAL_S), "--scale-up-window", str(UP_S),
        "--scale-down-window", str(DOWN_S), "--cooldown", str(COOLDOWN_S),
    ]  # fmt: skip
    env = {**os.environ, "TANDEM_HOME": str(tmp_path / "home")}
    with log_path.open("w") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tandem.cli", *cmd],
            stdout=subprocess.PIPE, stderr=log_file, env=env, cwd=ROOT, text=True,
        )  # fmt: skip
    sampler: Sampler | None = None
    thread: threading.Thread | None = None
    try:
        line = _read_line(proc, 180)
        assert line.startswith("Tandem serving"), line + log_path.read_text()[-3000:]
        ports = {m[1]: int(m[2]) for m in STARTED.finditer(log_path.read_text())}
        assert len(ports) == WORKERS, log_path.read_text()[-3000:]
        sampler = Sampler(ports, port)
        _, roles0, idle = sampler.sample()
        assert sorted(roles0.values()) == ["decode", "decode", "prefill"]  # even split of 3
        thread = threading.Thread(target=sampler.run, daemon=True)
        thread.start()
        t0 = time.monotonic()
        report = _replay(port, tmp_path / "replay.json")
        t_end = time.monotonic()
        summary = report["summary"]
        assert summary["failed"] == 0 and summary["completed"] == summary["requests"], summary[
            "errors"
        ]
        assert summary["output_length_mismatches"] == 0
        # The KV blocks come back: every worker at its idle value again.
        deadline = time.monotonic() + 30
        while (used := sampler.sample()[2]) != idle:
            assert time.monotonic() < deadline, f"KV blocks still in use: {used} (idle {idle})"
            time.sleep(0.5)
        switches = _switches(sampler)
    finally:
        if sampler is not None:
            sampler.stop.set()
        if thread is not None:
            thread.join(10)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    log = log_path.read_text()
    print("\n".join(ln for ln in log.splitlines() if "autoscale" in ln))
    assert code == 0
    assert sampler is not None
    shift = t0 + PHASE_S
    # The workers' own role gauges: more prefill while prompt-heavy, more decode after.
    prefill_a = sampler.count("prefill", t0, shift)
    assert max(prefill_a) == 2, prefill_a
    first_two = next(
        t for t, roles, _ in sampler.samples if list(roles.values()).count("prefill") == 2
    )
    back = [
        t
        for t, roles, _ in sampler.samples
        if t > first_two and list(roles.values()).count("decode") == 2
    ]
    assert back and back[0] > shift, "decode regained its worker before the output-heavy phase"
    assert sampler.count("decode", back[0], t_end)[-1] == 2
    # The router routes by the roles the workers report: it saw both flips.
    seen = [roles.count("prefill") for t, roles in sampler.router]
    assert 2 in seen and seen[-1] == 1, seen
    # The serve log: exactly one flip each way, in that order, and none after the last one
    # for more than a stabilization window of steady output-heavy load.
    flips = [(m[2], m[3]) for m in FLIP.finditer(log)]
    assert flips == [("decode", "prefill"), ("prefill", "decode")], flips
    assert t_end - back[0] > DOWN_S + COOLDOWN_S, "too little steady load after the last flip"
    # The workers counted their own switches: one to prefill, one back to decode.
    assert switches == {"prefill": 1.0, "decode": 1.0}, switches
    assert len(re.findall(r"autoscale: worker-\d+ is now (prefill|decode)", log)) == 2


# ----- the loop's shell, without processes ------------------------------------------------
def _scaler() -> Autoscaler:
    members = [Member(w, "127.0.0.1:1", "http://127.0.0.1:1/metrics") for w in ("w0", "w1")]
    return Autoscaler(AutoscaleConfig(interval_s=1.0), members, "http://127.0.0.1:1/metrics")


def test_a_router_that_does_not_answer_gives_no_decision_and_one_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    scaler = _scaler()
    workers = {"w0": _worker_text("prefill", 0.0), "w1": _worker_text("decode", 0.0)}
    rounds = [_round(0.0, {**workers, ROUTER: ROUTER_TEXT})]
    rounds += [_round(float(i), workers, {ROUTER: "timeout"}) for i in (1, 2, 3)]
    with caplog.at_level("INFO", logger="tandem.serve"):
        decisions = [scaler.step(a, b) for a, b in itertools.pairwise(rounds)]
    assert [d.action for d in decisions] == ["degraded"] * 3
    assert scaler.decisions == [] and scaler.state.recommendations == ()
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["autoscale: degraded: signal source down: router; no scaling decision"]


async def test_scrape_reads_pages_and_names_what_failed() -> None:
    from aiohttp import ClientSession, ClientTimeout, web

    from tandem.launch.spec import free_port

    app = web.Application()

    async def page(_: web.Request) -> web.Response:
        return web.Response(text=_worker_text("decode", 1.0))

    app.router.add_get("/metrics", page)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    dead = free_port()
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        members = [Member(w, "127.0.0.1:1", url) for w in ("w0", "w1")]
        scaler = Autoscaler(AutoscaleConfig(), members, f"http://127.0.0.1:{dead}/metrics")
        async with ClientSession(timeout=ClientTimeout(total=5)) as session:
            got = await scaler._scrape(session)
    finally:
        await runner.cleanup()
    assert set(got.texts) == {"w0", "w1"} and "tandem_worker_role" in got.texts["w0"]
    assert set(got.errors) == {ROUTER}


# ----- bench/redistribution.py's pure parts -------------------------------------------------
def _bench():  # type: ignore[no-untyped-def]
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "redistribution", ROOT / "bench" / "redistribution.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["redistribution"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_bench_runs_colocated_every_static_split_and_adaptive() -> None:
    names = [p.name for p in _bench().policies(4, ["--cooldown", "6"])]
    assert names == ["colocated", "static 1:3", "static 2:2", "static 3:1", "adaptive"]


def test_bench_tallies_busy_per_role_and_counts_flips() -> None:
    b = _bench()

    def s(at: float, r1: str, busy1: float) -> object:
        return b.Sample(at, {"w0": "prefill", "w1": r1}, {"w0": at * 0.5, "w1": busy1},
                        {"w0": at * 100, "w1": 0.0}, {"w0": 0.0, "w1": at * 10})  # fmt: skip

    samples = [s(0, "decode", 0.0), s(1, "decode", 0.2), s(2, "prefill", 1.2)]
    t = b.tally(samples)
    assert t["prefill"].worker_s == 3 and t["prefill"].busy_s == pytest.approx(2.0)
    assert t["decode"].worker_s == 1 and t["decode"].busy_s == pytest.approx(0.2)
    assert b.flips(samples) == 1


def test_bench_fluid_bound_matches_redistribution_md() -> None:
    b = _bench()
    # Phase A: 2 GPU-s/s of prefill, 1 of decode; phase B the reverse. Adaptive needs 3 at
    # any moment, a static split 2 + 2 = 4: the bound is 4/3.
    a, bb = b.Phase(2000.0, 100.0, 10), b.Phase(1000.0, 200.0, 10)
    got = b.fluid_bound(a, bb, cost_prefill=0.001, cost_decode=0.01)
    assert got["adaptive_over_static"] == pytest.approx(4 / 3)
    # A stationary mix: no gain to be had.
    assert b.fluid_bound(a, a, 0.001, 0.01)["adaptive_over_static"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("probes", "next_scale", "best"),
    [
        ([(1.0, 0.95)], 2.0, 1.0),  # passing: double
        ([(1.0, 0.95), (2.0, 0.97)], 4.0, 2.0),
        ([(1.0, 0.5)], 0.5, None),  # failing: halve
        ([(1.0, 0.95), (2.0, 0.6)], 1.5, 1.0),  # bracketed: bisect
        ([(1.0, 0.95), (2.0, 0.6), (1.5, 0.91)], 1.75, 1.5),
        ([(1.0, 0.5), (0.5, 0.92)], 0.75, 0.5),
        # noise: a pass above a failure does not count as sustained
        ([(1.0, 0.95), (2.0, 0.6), (4.0, 0.93)], 1.5, 1.0),
    ],
)
def test_bench_rate_search(probes: list, next_scale: float, best: float | None) -> None:
    b = _bench()
    assert b.next_probe(probes) == pytest.approx(next_scale)
    assert b.sustained(probes) == best
