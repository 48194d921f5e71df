"""Turns paired rounds (direct, then through the proxy) into the figures the benchmark prints: medians
over rounds of per-round differences, CPU per request, and the memory and start-up figures."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from bench.measure import LoadResult


@dataclass(frozen=True, slots=True)
class Round:
    """One interleaved pair at one concurrency and mode, and the proxy's CPU time during its half."""

    direct: LoadResult
    proxied: LoadResult
    proxy_cpu_seconds: float


@dataclass(slots=True)
class Report:
    #: "gatewayd" or "reference" (the minimal proxy measured in the same rounds)
    name: str
    proxy_command: str
    load_tool: str
    duration_seconds: float
    rounds: int
    pinned: str
    start_to_ready_seconds: float
    idle_rss_bytes: int
    peak_rss_bytes: int | None = None
    plain: dict[int, list[Round]] = field(default_factory=dict)
    stream: dict[int, list[Round]] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "proxy_command": self.proxy_command,
            "load_tool": self.load_tool,
            "duration_seconds": self.duration_seconds,
            "rounds": self.rounds,
            "pinned": self.pinned,
            "start_to_ready_seconds": self.start_to_ready_seconds,
            "idle_rss_bytes": self.idle_rss_bytes,
            "peak_rss_bytes": self.peak_rss_bytes,
            "plain": {str(c): summarize_plain(rounds) for c, rounds in self.plain.items()},
            "stream": {str(c): summarize_stream(rounds) for c, rounds in self.stream.items()},
            "raw": {
                "plain": {str(c): [asdict(r) for r in rounds] for c, rounds in self.plain.items()},
                "stream": {str(c): [asdict(r) for r in rounds] for c, rounds in self.stream.items()},
            },
        }


def _median(values: Sequence[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return statistics.median(present) if present else None


def _difference(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _per_request_ms(round_: Round) -> float | None:
    if round_.proxied.requests == 0:
        return None
    return round_.proxy_cpu_seconds * 1000 / round_.proxied.requests


def summarize_plain(rounds: Sequence[Round]) -> dict[str, float | None]:
    """Medians over rounds; "added" figures are proxied minus direct within each round."""
    return {
        "direct_p50_ms": _median([r.direct.latency_p50_ms for r in rounds]),
        "added_p50_ms": _median(
            [_difference(r.proxied.latency_p50_ms, r.direct.latency_p50_ms) for r in rounds]
        ),
        "added_p99_ms": _median(
            [_difference(r.proxied.latency_p99_ms, r.direct.latency_p99_ms) for r in rounds]
        ),
        "direct_rps": _median([r.direct.rps for r in rounds]),
        "proxied_rps": _median([r.proxied.rps for r in rounds]),
        # CPU seconds per 1,000 requests is numerically CPU milliseconds per request
        "cpu_s_per_1k_requests": _median([_per_request_ms(r) for r in rounds]),
        "errors": sum(r.proxied.errors + r.direct.errors for r in rounds),
    }


def summarize_stream(rounds: Sequence[Round]) -> dict[str, float | None]:
    return {
        "direct_ttfc_p50_ms": _median([r.direct.ttfc_p50_ms for r in rounds]),
        "added_ttfc_p50_ms": _median(
            [_difference(r.proxied.ttfc_p50_ms, r.direct.ttfc_p50_ms) for r in rounds]
        ),
        "added_ttfc_p99_ms": _median(
            [_difference(r.proxied.ttfc_p99_ms, r.direct.ttfc_p99_ms) for r in rounds]
        ),
        "direct_total_p50_ms": _median([r.direct.latency_p50_ms for r in rounds]),
        "proxied_total_p50_ms": _median([r.proxied.latency_p50_ms for r in rounds]),
        "added_total_p50_ms": _median(
            [_difference(r.proxied.latency_p50_ms, r.direct.latency_p50_ms) for r in rounds]
        ),
        "proxied_streams_per_s": _median([r.proxied.rps for r in rounds]),
        "cpu_ms_per_stream": _median([_per_request_ms(r) for r in rounds]),
        "errors": sum(r.proxied.errors + r.direct.errors for r in rounds),
    }


def _cell(value: float | int | None, digits: int = 2, *, signed: bool = False) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:+,.{digits}f}" if signed else f"{value:,.{digits}f}"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(headers[i]), *(len(row[i]) for row in rows)) for i in range(len(headers))]
    lines = ["  ".join(header.rjust(width) for header, width in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * width for width in widths))
    lines += ["  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)


def format_report(report: Report) -> str:
    """The human-readable figures: two tables (non-streaming, streaming) and the process figures."""
    plain_rows = []
    for concurrency, rounds in sorted(report.plain.items()):
        s = summarize_plain(rounds)
        plain_rows.append(
            [
                str(concurrency),
                _cell(s["direct_p50_ms"], 3),
                _cell(s["added_p50_ms"], 3, signed=True),
                _cell(s["added_p99_ms"], 3, signed=True),
                _cell(s["direct_rps"], 0),
                _cell(s["proxied_rps"], 0),
                _cell(s["cpu_s_per_1k_requests"], 3),
                _cell(int(s["errors"] or 0)),
            ]
        )
    stream_rows = []
    for concurrency, rounds in sorted(report.stream.items()):
        s = summarize_stream(rounds)
        stream_rows.append(
            [
                str(concurrency),
                _cell(s["direct_ttfc_p50_ms"], 2),
                _cell(s["added_ttfc_p50_ms"], 2, signed=True),
                _cell(s["added_ttfc_p99_ms"], 2, signed=True),
                _cell(s["direct_total_p50_ms"], 1),
                _cell(s["proxied_total_p50_ms"], 1),
                _cell(s["proxied_streams_per_s"], 1),
                _cell(s["cpu_ms_per_stream"], 2),
                _cell(int(s["errors"] or 0)),
            ]
        )
    mib = 1024 * 1024
    parts = [
        f"== {report.name}",
        f"proxy: {report.proxy_command}",
        f"load: {report.load_tool}; {report.duration_seconds:g} s per run; {report.rounds} interleaved "
        f"round(s), medians; {report.pinned}",
        "",
        "Non-streaming (POST /v1/chat/completions)",
        _table(
            [
                "conc",
                "direct p50 ms",
                "added p50 ms",
                "added p99 ms",
                "direct req/s",
                "proxied req/s",
                "CPU s/1k req",
                "errors",
            ],
            plain_rows,
        ),
        "",
        "Streaming (64 chunks per stream)",
        _table(
            [
                "conc",
                "direct TTFC p50",
                "added TTFC p50",
                "added TTFC p99",
                "direct total p50",
                "proxied total p50",
                "streams/s",
                "CPU ms/stream",
                "errors",
            ],
            stream_rows,
        ),
        "",
        f"start to ready: {report.start_to_ready_seconds * 1000:,.0f} ms",
        f"idle RSS: {report.idle_rss_bytes / mib:,.1f} MiB",
        "peak RSS: " + ("-" if report.peak_rss_bytes is None else f"{report.peak_rss_bytes / mib:,.1f} MiB"),
    ]
    return "\n".join(parts)


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def _round_ratios(
    mine: Sequence[Round], reference: Sequence[Round], figure: Callable[[Round], float | None]
) -> float | None:
    """The median over rounds of mine/reference, each ratio taken within one round (both proxies were
    measured in that round, against the same direct run)."""
    return _median([_ratio(figure(a), figure(b)) for a, b in zip(mine, reference, strict=False)])


def ratios(report: Report, reference: Report) -> dict[str, Any]:
    """``report``'s figures divided by ``reference``'s, per concurrency and mode, and for start-up and
    memory. Above 1 means more (req/s: better; CPU, latency, memory: worse)."""

    def added(name: str) -> Callable[[Round], float | None]:
        return lambda r: _difference(getattr(r.proxied, name), getattr(r.direct, name))

    plain = {
        str(c): {
            "rps": _round_ratios(rounds, reference.plain.get(c, []), lambda r: r.proxied.rps),
            "added_p50": _round_ratios(rounds, reference.plain.get(c, []), added("latency_p50_ms")),
            "cpu_per_request": _round_ratios(rounds, reference.plain.get(c, []), _per_request_ms),
        }
        for c, rounds in sorted(report.plain.items())
    }
    stream = {
        str(c): {
            "streams_per_s": _round_ratios(rounds, reference.stream.get(c, []), lambda r: r.proxied.rps),
            "added_ttfc_p50": _round_ratios(rounds, reference.stream.get(c, []), added("ttfc_p50_ms")),
            "cpu_per_stream": _round_ratios(rounds, reference.stream.get(c, []), _per_request_ms),
        }
        for c, rounds in sorted(report.stream.items())
    }
    return {
        "plain": plain,
        "stream": stream,
        "start_to_ready": _ratio(report.start_to_ready_seconds, reference.start_to_ready_seconds),
        "idle_rss": _ratio(report.idle_rss_bytes, reference.idle_rss_bytes),
    }


def format_ratios(report: Report, reference: Report) -> str:
    """The ratio table: ``report`` / ``reference``, medians of per-round ratios."""
    figures = ratios(report, reference)
    rows = []
    for concurrency in sorted({*report.plain, *report.stream}):
        p = figures["plain"].get(str(concurrency), {})
        s = figures["stream"].get(str(concurrency), {})
        rows.append(
            [
                str(concurrency),
                _cell(p.get("rps"), 2),
                _cell(p.get("added_p50"), 2),
                _cell(p.get("cpu_per_request"), 2),
                _cell(s.get("streams_per_s"), 2),
                _cell(s.get("added_ttfc_p50"), 2),
                _cell(s.get("cpu_per_stream"), 2),
            ]
        )
    return "\n".join(
        [
            f"== {report.name} / {reference.name} (medians of per-round ratios; req/s above 1 is better, "
            "the others below 1)",
            _table(
                [
                    "conc",
                    "req/s",
                    "added p50",
                    "CPU/req",
                    "streams/s",
                    "added TTFC p50",
                    "CPU/stream",
                ],
                rows,
            ),
            "",
            f"start to ready: {_cell(figures['start_to_ready'], 2)}  "
            f"({report.start_to_ready_seconds * 1000:,.0f} ms / "
            f"{reference.start_to_ready_seconds * 1000:,.0f} ms)",
            f"idle RSS: {_cell(figures['idle_rss'], 2)}  "
            f"({report.idle_rss_bytes / 2**20:,.1f} MiB / {reference.idle_rss_bytes / 2**20:,.1f} MiB)",
        ]
    )
