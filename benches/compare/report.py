#!/usr/bin/env python3
"""The table of benches/compare.sh, built from its raw measurements (python3 stdlib only).

    report.py RAW [--out FILE]

Prints the markdown report (header, table, targets, notes, broken checks) and, with --out,
writes it to FILE as well. RAW holds one JSON object a line, written by compare.sh as it
measures:

  {"meta": {...}}      run parameters: mode, runs, layer_mib, small_images, wrk, concurrent,
                       mem_cap_mib, disk_max_obj, mem_max_obj, berth_bin, rev, cores,
                       load_start, load_end, date, seconds. Later meta lines add to earlier ones.
  {"fig": F, "who": W, "run": N, "value": X, "unit": U[, "bytes": B]}
                       one measurement of figure F on side W (berth, proxy, upstream, nginx)
                       in run N (from 1). U is "s" (a timed transfer of B bytes), "req/s",
                       "MiB" or "gets" (upstream GETs of one blob). The figures:
                         cold                 single GET of a layer no mirror has (s)
                         conc, conc-gets      CONCURRENT GETs of another such layer (s; gets)
                         warm-T-seq, -par     4 layers, one after another / at once, from
                                              tier T (disk, memory) (s)
                         man-tags, -digests   wrk over the small images' manifests (req/s)
                         rss-disk, -memory    peak RSS of each run's mirrors (MiB), and
                         rss-ctd              of the mirrors the containerd runs used
                         ctd-cold, -warm      ctr content fetch of the 4-layer image (s)
  {"note": TEXT}       worth reading beside the table; repeated notes are printed once
  {"broken": TEXT}     a check that failed: wrong bytes, wrong tier, a second upstream fetch

Each cell is the median of the runs of that figure and side, with min-max in brackets. A GB/s
figure is computed per run (bytes / seconds), then the median taken. A ratio is the ratio of
the two medians. A ratio target is met when the ratio, as printed (2 decimals), meets it; a
bound on a count or on memory (exactly 1 upstream GET, peak RSS) is met when every run meets it.
"""
import json
import statistics
import sys


class Raw:
    """The parsed raw file: meta, per (figure, side) the measurements in run order, notes, broken."""

    def __init__(self, lines):
        self.meta, self.recs, self.notes, self.broken = {}, {}, [], []
        for n, line in enumerate(lines, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"line {n}: not JSON ({e}): {line[:200]}") from None
            if "meta" in rec:
                self.meta.update(rec["meta"])
            elif "note" in rec:
                self.notes.append(rec["note"])
            elif "broken" in rec:
                self.broken.append(rec["broken"])
            elif "fig" in rec:
                float(rec["value"])
                self.recs.setdefault((rec["fig"], rec["who"]), []).append(rec)
            else:
                raise ValueError(f"line {n}: no meta, note, broken or fig: {line[:200]}")

    def stat(self, fig, who, rate=False):
        """Stat of that figure and side: the values as recorded, or with rate=True GB/s per
        run (bytes / seconds / 10^9); None when not measured"""
        recs = self.recs.get((fig, who))
        if not recs:
            return None
        if rate:
            for r in recs:
                if r.get("unit") != "s" or not r.get("bytes") or float(r["value"]) <= 0:
                    raise ValueError(f"{fig} {who}: a rate needs seconds and bytes, got {r}")
            return Stat(r["bytes"] / float(r["value"]) / 1e9 for r in recs)
        return Stat(float(r["value"]) for r in recs)


class Stat:
    def __init__(self, vals):
        self.vals = list(vals)
        self.n = len(self.vals)
        self.median = statistics.median(self.vals)
        self.lo, self.hi = min(self.vals), max(self.vals)

    def __add__(self, other):
        return Stat(self.vals + other.vals)


def cell(st, digits, runs=None):
    """median (min–max), or the value alone for one run; '-' when not measured. When fewer
    runs than RUNS gave a value, says how many did."""
    if st is None:
        return "-"
    f = f"{{:.{digits}f}}".format
    s = f(st.median)
    short = f"{st.n} of {runs} runs" if runs and st.n < runs else ""
    if st.n > 1:
        s += f" ({f(st.lo)}–{f(st.hi)}" + (f"; {short})" if short else ")")
    elif short:
        s += f" ({short})"
    return s


def ratio(a, b):
    """median of a / median of b (a, b: Stat or a number), None when either is missing"""
    a = a.median if isinstance(a, Stat) else a
    b = b.median if isinstance(b, Stat) else b
    if a is None or b is None or b == 0:
        return None
    return a / b


def fmt_ratio(r):
    return "-" if r is None else f"{r:.2f}"


def met(op, limit, value):
    """yes / no / n/a"""
    if value is None or limit is None:
        return "n/a"
    ok = {">=": value >= limit, "<=": value <= limit, "==": value == limit}[op]
    return "yes" if ok else "no"


def met_ratio(op, limit, r):
    """a ratio target, judged on the ratio as printed (2 decimals)"""
    return met(op, limit, None if r is None else round(r, 2))


def met_all(op, limit, st):
    """a bound, met when every run meets it"""
    if st is None or limit is None:
        return "n/a"
    return "yes" if all(met(op, limit, v) == "yes" for v in st.vals) else "no"


def both(a, b):
    if "n/a" in (a, b):
        return "n/a"
    return "yes" if (a, b) == ("yes", "yes") else "no"


def rows(raw):
    """[(figure, berth, proxy, reference, berth/ref, target, met?)] in table order"""
    m = raw.meta
    runs = m.get("runs")
    conc = m.get("concurrent", 16)
    s = raw.stat
    out = []

    def c(st, digits):
        return cell(st, digits, runs)

    b, p, u = s("cold", "berth", True), s("cold", "proxy", True), s("cold", "upstream", True)
    r = ratio(b, u)
    out.append(("cold single GET, GB/s (ref: direct upstream)", c(b, 2), c(p, 2), c(u, 2),
                fmt_ratio(r), "≥ 0.9x", met_ratio(">=", 0.9, r)))
    for tier in ("disk", "memory"):
        for kind, what in (("seq", "sequential 4 layers"), ("par", "4 parallel, aggregate")):
            fig = f"warm-{tier}-{kind}"
            b, n = s(fig, "berth", True), s(fig, "nginx", True)
            pc = c(s(fig, "proxy", True), 2) if tier == "disk" else "(no memory tier)"
            r = ratio(b, n)
            out.append((f"warm GET, {tier} tier, {what}, GB/s (ref: nginx)", c(b, 2), pc,
                        c(n, 2), fmt_ratio(r), "≥ 1.0x", met_ratio(">=", 1.0, r)))
    b = s("conc-gets", "berth")
    out.append((f"{conc} concurrent cold GETs of one layer: upstream GETs of it", c(b, 0),
                c(s("conc-gets", "proxy"), 0), "1", "-", "exactly 1", met_all("==", 1, b)))
    b, ref = s("conc", "berth"), s("cold", "berth")
    r = ratio(b, ref)
    out.append((f"{conc} concurrent cold GETs of one layer: wall s (ref: one cold GET via berth)",
                c(b, 3), c(s("conc", "proxy"), 3), c(ref, 3), fmt_ratio(r), "≤ 1.3x",
                met_ratio("<=", 1.3, r)))
    b, p, u = s("man-tags", "berth"), s("man-tags", "proxy"), s("man-tags", "upstream")
    r, r2 = ratio(b, u), ratio(b, p)
    out.append(("manifest by tag, req/s (ref: direct upstream)", c(b, 0), c(p, 0), c(u, 0),
                fmt_ratio(r), f"≥ 2x ref; ≥ 10x proxy (got {fmt_ratio(r2)}x)",
                both(met_ratio(">=", 2, r), met_ratio(">=", 10, r2))))
    b, p, u = s("man-digests", "berth"), s("man-digests", "proxy"), s("man-digests", "upstream")
    out.append(("manifest by digest, req/s (ref: direct upstream)", c(b, 0), c(p, 0), c(u, 0),
                fmt_ratio(ratio(b, u)), "-", "-"))
    cap = m.get("mem_cap_mib")
    lim = None if cap is None else cap + 64
    cap_s = "-" if cap is None else str(cap)
    b = s("rss-disk", "berth")
    # the bound is judged on every berth of that configuration, the containerd runs' too
    every, ctd = b, s("rss-ctd", "berth")
    if every is not None and ctd is not None:
        every = every + ctd
    out.append((f"peak RSS MiB, berth memory_max_object={m.get('disk_max_obj', '?')} (ref: memory_capacity)",
                c(b, 0), c(s("rss-disk", "proxy"), 0), cap_s, fmt_ratio(ratio(b, cap)),
                f"≤ {lim} MiB", met_all("<=", lim, every)))
    b = s("rss-memory", "berth")
    out.append((f"peak RSS MiB, berth memory_max_object={m.get('mem_max_obj', '?')} (ref: memory_capacity)",
                c(b, 0), "-", cap_s, fmt_ratio(ratio(b, cap)), f"≤ {lim} MiB",
                met_all("<=", lim, b)))
    for phase, target, limit in (("cold", "-", None), ("warm", "≤ 1.05x", 1.05)):
        fig = f"ctd-{phase}"
        b, p, u = s(fig, "berth"), s(fig, "proxy"), s(fig, "upstream")
        r = ratio(b, u)
        out.append((f"ctr content fetch bench/big:1, {phase}, s (ref: direct upstream)",
                    c(b, 3), c(p, 3), c(u, 3), fmt_ratio(r), target,
                    "-" if limit is None else met_ratio("<=", limit, r)))
    return out


def notes(raw):
    """the notes derived from the figures, then the recorded ones (repeats once, counted)"""
    m = raw.meta
    out = []
    floor = raw.stat("conc", "nginx")
    conc = m.get("concurrent", 16)
    out.append(f"client floor for the {conc}-concurrent figure: nginx serving that blob warm "
               f"(page cache, sendfile) to the same {conc} curl clients took "
               f"{cell(floor, 3, m.get('runs'))} s")
    b, p = raw.stat("rss-ctd", "berth"), raw.stat("rss-ctd", "proxy")
    if b or p:
        out.append(f"peak RSS of the mirrors the containerd runs used (the RSS bound holds for "
                   f"these too): berth {cell(b, 0)} MiB, distr. proxy {cell(p, 0)} MiB")
    seen = {}
    for n in raw.notes:
        seen[n] = seen.get(n, 0) + 1
    out += [n if k == 1 else f"{n} ({k} times)" for n, k in seen.items()]
    return out


def report(raw):
    """the whole report as one string"""
    m = raw.meta
    runs = m.get("runs", "?")
    lines = [
        f"# berth compare ({m.get('mode', '?')} mode), {m.get('date', '?')}",
        "",
        f"berth: `{m.get('berth_bin', '?')}` (repo HEAD {m.get('rev', '?')}); {m.get('cores', '?')} cores; "
        f"load average at start {m.get('load_start', '?')}, at end {m.get('load_end', '?')}.",
        f"Layers: 4 x {m.get('layer_mib', '?')} MiB random bytes; {m.get('small_images', '?')} small images; "
        f"wrk {m.get('wrk', '?')}; each figure the median of {runs} runs (min–max); ratios of "
        f"medians; GB = 10^9 bytes; memory_capacity {m.get('mem_cap_mib', '?')}MiB.",
        "",
        "| figure | berth | distr. proxy | reference | berth/ref | target | met? |",
        "|---|---|---|---|---|---|---|",
    ]
    table = rows(raw)
    lines += ["| " + " | ".join(r) + " |" for r in table]
    lines += ["", "Targets:"]
    for r in table:
        word = {"yes": "met", "no": "MISSED", "n/a": "not measured (see broken/notes)"}.get(r[6])
        if word:
            lines.append(f"- {word}: {r[0]}")
    lines += ["", "Notes:"] + [f"- {n}" for n in notes(raw)]
    if raw.broken:
        lines += ["", "BROKEN:"] + [f"- {b}" for b in raw.broken]
    return "\n".join(lines) + "\n"


def main(argv):
    args, out = list(argv), None
    if "--out" in args:
        i = args.index("--out")
        out = args[i + 1] if i + 1 < len(args) else sys.exit("report.py: --out needs a file")
        del args[i:i + 2]
    if len(args) != 1:
        sys.exit("usage: report.py RAW [--out FILE]")
    with open(args[0], encoding="utf-8") as f:
        try:
            text = report(Raw(f))
        except ValueError as e:
            sys.exit(f"report.py: {args[0]}: {e}")
    sys.stdout.write(text)
    if out:
        with open(out, "w", encoding="utf-8") as f:
            f.write(text)


if __name__ == "__main__":
    main(sys.argv[1:])
