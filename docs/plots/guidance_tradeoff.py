"""Plot the classifier-free guidance trade-off from `python -m nets.evaluate` JSON files.

Usage (after sampling and evaluating one .npz per guidance strength, see docs/results.md):
    python docs/plots/guidance_tradeoff.py OUT.png W1=path/w1.json W2=path/w2.json ...
"""

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(out: str, pairs: list[str]) -> None:
    ws, acc, fd, ent = [], [], [], []
    for pair in pairs:
        w, path = pair.split("=", 1)
        m = json.loads(open(path).read())["metrics"]
        ws.append(float(w))
        acc.append(100 * m["label_agreement"])
        fd.append(m["frechet_distance"])
        ent.append(m["class_entropy"])
    fig, ax1 = plt.subplots(figsize=(6, 3.6))
    ax1.plot(ws, acc, "o-", color="tab:blue", label="requested digit (%)")
    ax1.set_xlabel("guidance strength w (1 = plain conditional)")
    ax1.set_ylabel("classified as requested (%)", color="tab:blue")
    ax2 = ax1.twinx()
    ax2.plot(ws, fd, "s--", color="tab:red", label="Fréchet distance")
    ax2.set_ylabel("Fréchet distance (classifier features)", color="tab:red")
    ax1.set_title("Classifier-free guidance: accuracy vs sample quality")
    ax1.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
