"""Unit tests of report.py on fixed raw input (python3 -m unittest, stdlib only).

    python3 -m unittest discover -s benches/compare -p 'test_*.py'
"""
import json
import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import report  # noqa: E402

MIB256 = 256 << 20


def rec(fig, who, run, value, unit="s", nbytes=None):
    r = {"fig": fig, "who": who, "run": run, "value": value, "unit": unit}
    if nbytes is not None:
        r["bytes"] = nbytes
    return json.dumps(r)


def raw_lines():
    meta = {"mode": "full", "runs": 3, "concurrent": 16, "mem_cap_mib": 1536,
            "disk_max_obj": "64MiB", "mem_max_obj": "512MiB", "layer_mib": 256}
    lines = [json.dumps({"meta": meta})]
    # cold: 1e9 bytes in 2, 1 and 4 s -> 0.5, 1.0, 0.25 GB/s (median 0.5); upstream 1.0 each
    for run, secs in enumerate((2.0, 1.0, 4.0), 1):
        lines.append(rec("cold", "berth", run, secs, nbytes=10**9))
        lines.append(rec("cold", "upstream", run, 1.0, nbytes=10**9))
    # the proxy: only 2 of 3 runs, 1 and 2 GB/s: an even count's median is the mean (1.5)
    lines.append(rec("cold", "proxy", 1, 1.0, nbytes=10**9))
    lines.append(rec("cold", "proxy", 2, 0.5, nbytes=10**9))
    # concurrent wall: median 3 s against the cold berth median of 2 s -> 1.50
    for run, secs in enumerate((3.0, 5.0, 2.5), 1):
        lines.append(rec("conc", "berth", run, secs, nbytes=16 * 10**9))
        lines.append(rec("conc-gets", "berth", run, 1, unit="gets"))
        lines.append(rec("conc-gets", "proxy", run, 17, unit="gets"))
    # warm disk sequential: berth 4 GB in 1, 2, 1 s; nginx in 2 s each -> 2.00
    for run, secs in enumerate((1.0, 2.0, 1.0), 1):
        lines.append(rec("warm-disk-seq", "berth", run, secs, nbytes=4 * 10**9))
        lines.append(rec("warm-disk-seq", "nginx", run, 2.0, nbytes=4 * 10**9))
    # manifests: berth 1000/3000/2000 (median 2000), upstream 500 -> 4.00, proxy 100 -> 20x
    for run, rps in enumerate((1000, 3000, 2000), 1):
        lines.append(rec("man-tags", "berth", run, rps, unit="req/s"))
        lines.append(rec("man-tags", "upstream", run, 500, unit="req/s"))
        lines.append(rec("man-tags", "proxy", run, 100, unit="req/s"))
    # RSS: median 1000 of the disk rounds, but one containerd-run berth above 1600
    for run, mib in enumerate((900, 1000, 1100), 1):
        lines.append(rec("rss-disk", "berth", run, mib, unit="MiB"))
        lines.append(rec("rss-ctd", "berth", run, 1700 if run == 2 else 800, unit="MiB"))
        lines.append(rec("rss-memory", "berth", run, 1300, unit="MiB"))
    # containerd warm: berth 3.15 s vs upstream 3 s -> 1.05 as printed: met
    for run in (1, 2, 3):
        lines.append(rec("ctd-warm", "berth", run, 3.15))
        lines.append(rec("ctd-warm", "upstream", run, 3.0))
    lines.append(json.dumps({"note": "berth tiers: fill-leader=1 fill-follower=15"}))
    lines.append(json.dumps({"note": "berth tiers: fill-leader=1 fill-follower=15"}))
    lines.append(json.dumps({"meta": {"load_end": "1.00 2.00 3.00"}}))
    return lines


class ReportTest(unittest.TestCase):
    def setUp(self):
        self.raw = report.Raw(raw_lines())
        self.rows = {r[0]: r for r in report.rows(self.raw)}

    def row(self, prefix):
        hits = [r for name, r in self.rows.items() if name.startswith(prefix)]
        self.assertEqual(len(hits), 1, prefix)
        return hits[0]

    def test_median_min_max_of_rates(self):
        st = self.raw.stat("cold", "berth", rate=True)
        self.assertAlmostEqual(st.median, 0.5)
        self.assertAlmostEqual(st.lo, 0.25)
        self.assertAlmostEqual(st.hi, 1.0)
        self.assertEqual(st.n, 3)

    def test_even_count_median_is_the_mean_of_the_middle_two(self):
        self.assertAlmostEqual(self.raw.stat("cold", "proxy", rate=True).median, 1.5)

    def test_cold_row(self):
        r = self.row("cold single GET")
        self.assertEqual(r[1:], ("0.50 (0.25–1.00)", "1.50 (1.00–2.00; 2 of 3 runs)",
                                 "1.00 (1.00–1.00)", "0.50", "≥ 0.9x", "no"))

    def test_ratio_is_of_medians(self):
        # mean of the per-run ratios would be (3/2 + 5/1 + 2.5/4) / 3 = 2.375
        r = self.row("16 concurrent cold GETs of one layer: wall")
        self.assertEqual(r[1], "3.000 (2.500–5.000)")
        self.assertEqual(r[3], "2.000 (1.000–4.000)")
        self.assertEqual(r[4], "1.50")
        self.assertEqual(r[6], "no")

    def test_warm_and_missing_figures(self):
        r = self.row("warm GET, disk tier, sequential")
        self.assertEqual((r[1], r[3], r[4], r[6]), ("4.00 (2.00–4.00)", "2.00 (2.00–2.00)", "2.00", "yes"))
        r = self.row("warm GET, memory tier, 4 parallel")
        self.assertEqual((r[1], r[2], r[4], r[6]), ("-", "(no memory tier)", "-", "n/a"))

    def test_upstream_gets_every_run(self):
        r = self.row("16 concurrent cold GETs of one layer: upstream")
        self.assertEqual((r[1], r[2], r[6]), ("1 (1–1)", "17 (17–17)", "yes"))

    def test_manifests_both_targets(self):
        r = self.row("manifest by tag")
        self.assertEqual((r[1], r[4], r[5], r[6]),
                         ("2000 (1000–3000)", "4.00", "≥ 2x ref; ≥ 10x proxy (got 20.00x)", "yes"))

    def test_rss_bound_holds_for_every_run(self):
        r = self.row("peak RSS MiB, berth memory_max_object=64MiB")
        self.assertEqual((r[1], r[3], r[4], r[5], r[6]),
                         ("1000 (900–1100)", "1536", "0.65", "≤ 1600 MiB", "no"))
        self.assertEqual(self.row("peak RSS MiB, berth memory_max_object=512MiB")[6], "yes")

    def test_ratio_target_judged_as_printed(self):
        r = self.row("ctr content fetch bench/big:1, warm")
        self.assertEqual((r[4], r[6]), ("1.05", "yes"))
        self.assertEqual(self.row("ctr content fetch bench/big:1, cold")[6], "-")

    def test_report_text(self):
        text = report.report(self.raw)
        self.assertIn("| figure | berth | distr. proxy | reference | berth/ref | target | met? |", text)
        self.assertIn("- MISSED: cold single GET, GB/s (ref: direct upstream)", text)
        self.assertIn("- berth tiers: fill-leader=1 fill-follower=15 (2 times)", text)
        self.assertIn("at end 1.00 2.00 3.00", text)
        self.assertNotIn("BROKEN", text)
        broken = report.Raw(raw_lines() + [json.dumps({"broken": "berth: wrong bytes"})])
        self.assertIn("BROKEN:\n- berth: wrong bytes", report.report(broken))

    def test_bad_input(self):
        with self.assertRaises(ValueError):
            report.Raw(["{not json"])
        with self.assertRaises(ValueError):
            report.Raw([rec("cold", "berth", 1, 1.0)]).stat("cold", "berth", rate=True)


if __name__ == "__main__":
    unittest.main()
