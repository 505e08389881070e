"""Convergence over time, Latchkey beside ESO, from target/bench/results.json (`timelines`).

    python3 scripts/bench/plot.py target/bench/results.json target/bench/convergence.png
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

src, dst = sys.argv[1], sys.argv[2]
r = json.load(open(src))
tl = r.get("timelines", {})
n = r.get("n_10k")
fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
labels = {
    "latchkey": "Latchkey (started over existing activations)",
    "latchkey_live": "Latchkey (activations created while running)",
    "latchkey_nojob": "Latchkey, connection without a Job (started)",
    "eso": "External Secrets Operator v0.16.2 (started over existing ExternalSecrets)",
}
styles = {"latchkey": "-", "latchkey_live": "--", "latchkey_nojob": "-.", "eso": "-"}
for key in ["latchkey", "latchkey_live", "latchkey_nojob", "eso"]:
    pts = tl.get(key)
    if not pts:
        continue
    xs = [p[0] for p in pts]
    ys = [p[1] for p in pts]
    ax.step(xs, ys, where="post", linestyle=styles[key], label=labels[key])
b2 = r.get("bound_b2_seconds_10k")
if b2:
    ax.axvline(b2, color="grey", linestyle=":", label=f"B2 bound (plain client, same writes): {b2:.1f} s")
ax.set_xlabel("seconds since the process started (live: since the first activation was created)")
ax.set_ylabel("objects Ready")
ax.set_title(f"Convergence of N={n} objects over {r.get('namespaces')} namespaces (scale {r.get('scale')}, median run)")
ax.grid(True, alpha=0.3)
ax.legend(loc="lower right", fontsize=8)
fig.tight_layout()
fig.savefig(dst)
print(f"plot: {dst}")
