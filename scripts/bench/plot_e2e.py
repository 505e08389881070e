"""The OAuth callbacks end to end: p99 against the offered rate, the operator beside its bound (a plain client
making the same apiserver requests), from one or more results files (`callback_e2e_ladder`,
`callback_e2e_bound_ladder`; a ladder holds the last run of its figure).

    python3 scripts/bench/plot_e2e.py target/bench/e2e.png target/bench/results.json
    python3 scripts/bench/plot_e2e.py out.png "before=old-results.json" "after=target/bench/results.json"
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

dst, sources = sys.argv[1], sys.argv[2:]
fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
drawn = 0
for src in sources:
    label, _, path = src.rpartition("=")
    r = json.load(open(path))
    for key, who, style in [("callback_e2e_ladder", "Latchkey", "-o"), ("callback_e2e_bound_ladder", "bound (plain client)", ":s")]:
        ladder = r.get(key) or []
        pts = [(s["offered_rps"], s["p99_ms"]) for s in ladder if s.get("p99_ms") is not None]
        if not pts:
            continue
        name = f"{label}: {who}" if label else who
        ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=name)
        drawn += 1
if not drawn:
    sys.exit("no end-to-end ladder in the results")
ax.axhline(100, color="grey", linestyle="--", linewidth=1, label="target: p99 <= 100 ms at 200/s")
ax.axvline(200, color="grey", linestyle="--", linewidth=1)
ax.set_xscale("log")
ax.set_yscale("log")
rates = sorted({s["offered_rps"] for src in sources for k in ("callback_e2e_ladder",) for s in json.load(open(src.rpartition("=")[2])).get(k) or []})
ax.set_xticks(rates, [f"{r:g}" for r in rates])
ax.minorticks_off()
ax.set_xlabel("callbacks offered per second (open loop)")
ax.set_ylabel("p99 latency, ms")
ax.set_title("OAuth callbacks end to end (token endpoint answering at once, Secret write included)")
ax.grid(True, which="both", alpha=0.3)
ax.legend(loc="upper left", fontsize=8)
fig.tight_layout()
fig.savefig(dst)
print(f"wrote {dst}")
