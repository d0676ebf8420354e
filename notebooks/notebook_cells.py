"""The sources of the notebooks in this folder: one (title, data files, cells) triple per notebook.

notebooks/build_notebooks.py writes each: the title as the first markdown cell, the data files (paths
under the public data folder) as the setup cell's NEEDED, then the cells in order, ("md", markdown)
or ("code", source run only `if DATA_OK:`).
"""

from __future__ import annotations

MMLU = "routellm-evals/routellm-mmlu.normalized.jsonl"
MTBENCH = "routellm-evals/routellm-mtbench.normalized.jsonl"
MMLU_PRO = "mmlu-pro/mmlu-pro.normalized.jsonl"

# --------------------------------------------------------------------------- 01 explore a log

EXPLORE_LOG = (
    """
    # 01 — Exploring a labelled request log

    Who passes where in the public RouteLLM outcomes (Mixtral-8x7B as the cheap model, GPT-4-1106 as
    the strong one) on MMLU and MT-Bench: the four outcome classes, the subjects where the cheap model
    loses most, and how prompt length relates to passing. Then the models in MMLU-Pro.
    A router only earns its keep on the **strong-only** rows (cheap fails, strong passes): every
    other row is safe on the cheap model.
    """,
    {"mmlu": MMLU, "mtbench": MTBENCH, "mmlu_pro": MMLU_PRO},
    [
        ("code", '''
            import matplotlib.pyplot as plt
            import numpy as np
            import pandas as pd

            from router_model.encoder import estimate_tokens
            from router_model.offline.log import ReadOptions, read_logs

            CHEAP, STRONG = "mistralai/Mixtral-8x7B-Instruct-v0.1", "gpt-4-1106-preview"
            read = read_logs([NEEDED["mmlu"], NEEDED["mtbench"]], models=(CHEAP, STRONG))
            df = pd.DataFrame({
                "dataset": [r.category.split("/")[1] for r in read.records],
                "subject": [r.category.split("/")[-1] for r in read.records],
                "cheap": [r.passed[CHEAP] for r in read.records],
                "strong": [r.passed[STRONG] for r in read.records],
                "tokens": [estimate_tokens(r.full_text) for r in read.records],  # the documented chars / 4 estimate
            })
            df["outcome"] = np.select(
                [df.cheap & df.strong, df.cheap & ~df.strong, ~df.cheap & df.strong],
                ["both pass", "cheap only", "strong only"], "neither",
            )
            print(f"{read.rows_used} rows ({read.rows_read} read); cheap = {CHEAP}, strong = {STRONG}")
            display(df.groupby("dataset")[["cheap", "strong"]].mean().round(3).assign(rows=df.groupby("dataset").size()))
        '''),
        ("md", "## The four outcome classes (share of rows)"),
        ("code", '''
            classes = pd.crosstab(df.dataset, df.outcome, normalize="index").round(3)
            display(classes[["both pass", "cheap only", "strong only", "neither"]])
            print("Only 'strong only' rows need the strong model; 'cheap only' rows are where the cheap model is better.")
        '''),
        ("md", "## By subject: where does the cheap model lose most?"),
        ("code", '''
            mmlu = df[df.dataset == "mmlu"]
            by_subject = mmlu.groupby("subject").agg(
                rows=("cheap", "size"), cheap=("cheap", "mean"), strong=("strong", "mean"),
                strong_only=("outcome", lambda o: (o == "strong only").mean()),
            ).round(3)
            by_subject["gap"] = (by_subject.strong - by_subject.cheap).round(3)
            ranked = by_subject.sort_values("strong_only", ascending=False)
            print("MMLU subjects where the cheap model loses most (share of strong-only rows):")
            display(ranked.head(8))
            print("... and least:")
            display(ranked.tail(8))
            mt = df[df.dataset == "mt-bench"].groupby("subject")[["cheap", "strong"]].mean().round(3)
            print("MT-Bench (pass = judge score >= 8/10) by category:")
            display(mt.assign(gap=(mt.strong - mt.cheap).round(3)).sort_values("gap", ascending=False))
        '''),
        ("md", "## Prompt lengths (estimated tokens: characters / 4)"),
        ("code", '''
            fig, ax = plt.subplots(figsize=(7, 3.5))
            bins = np.logspace(0, np.log10(df.tokens.max() + 1), 40)
            for name, part in df.groupby("dataset"):
                ax.hist(part.tokens, bins=bins, alpha=0.6, label=f"{name} (n={len(part)})", density=True)
            ax.set_xscale("log")
            ax.set_xlabel("estimated input tokens")
            ax.set_ylabel("density")
            ax.legend()
            ax.set_title("Prompt length distribution")
            plt.show()
            print(df.groupby("dataset").tokens.describe(percentiles=[0.5, 0.9, 0.99]).round(0))
        '''),
        ("md", "## Pass rates by length bucket (MMLU, quintiles of length)"),
        ("code", '''
            mmlu = mmlu.assign(bucket=pd.qcut(mmlu.tokens, 5, duplicates="drop"))
            by_len = mmlu.groupby("bucket", observed=True).agg(
                rows=("cheap", "size"), cheap=("cheap", "mean"), strong=("strong", "mean"),
                strong_only=("outcome", lambda o: (o == "strong only").mean()),
            ).round(3)
            display(by_len)
            print("If strong_only rises with length, length alone carries some routing signal.")
        '''),
        ("md", "## MMLU-Pro: which models, how often right"),
        ("code", '''
            pro = read_logs([NEEDED["mmlu_pro"]], models=("gemini-1.5-flash-002", "gpt-4o-2024-05-13"),
                            options=ReadOptions(skip_invalid=True))
            print(f"{pro.rows_used} of {pro.rows_read} rows have outcomes for the main pair "
                  f"(skipped: {dict(pro.skipped) or 'none'})")
            rates = {}
            for r in pro.records:
                for model, ok in r.passed.items():
                    n, k = rates.get(model, (0, 0))
                    rates[model] = (n + 1, k + ok)
            table = pd.DataFrame([(m, n, k / n) for m, (n, k) in rates.items()], columns=["model", "rows", "pass rate"])
            display(table.sort_values("pass rate", ascending=False).round(3).reset_index(drop=True))
        '''),
    ],
)

# --------------------------------------------------------------------------- 02 train and calibrate

TRAIN_AND_CALIBRATE = (
    """
    # 02 — Training and calibrating a router

    A small router trained here, step by step, with the pieces `router-train` uses: the exported ONNX
    embedder (embeddings cached on disk, so a rerun is fast), the request features, and a logistic
    regression on the joint outcome (both / cheap only / strong only / neither). Its
    `p_cheap_ok = 1 - P(strong only)` is the probability that the cheap model loses nothing.

    We train on 4,000 MMLU rows of the *train* split (split by normalised prompt text, as the
    pipeline does) and judge on the whole held-out *test* split: the reliability diagram **before**
    (plain logistic regression) and **after** calibration (`CalibratedClassifierCV`, sigmoid, shuffled
    folds), then routing quality (APGR, CPT) beside random, heuristic and oracle routing.
    (`$ROUTER_NOTEBOOK_ROWS` trains on another number of rows and judges on at most as many held-out
    rows; the test suite runs it on 1,000.)
    """,
    {"mmlu": MMLU},
    [
        ("code", '''
            import time

            import matplotlib.pyplot as plt
            import numpy as np
            import pandas as pd
            from sklearn.calibration import CalibratedClassifierCV
            from sklearn.linear_model import LogisticRegression

            from router_model.features import DEFAULT_FEATURES
            from training.cache import default_cache_dir
            from router_model.offline.log import read_logs
            from router_model.offline.split import assign_splits, normalize_prompt
            from training.embedding.export import export_embedder
            from training.embedding.features import feature_matrix
            from training.embedding.onnx_embedder import OnnxEmbedder
            from router_model.offline import metrics as M
            from training.evaluate.baselines import heuristic_scores, oracle_scores, random_scores
            from training.head import calibration_folds, cheap_loses_nothing, make_target, p_cheap_ok

            N_TRAIN, SEED = int(os.environ.get("ROUTER_NOTEBOOK_ROWS", 4000)), 0
            read = read_logs([NEEDED["mmlu"]], models=("mistralai/Mixtral-8x7B-Instruct-v0.1", "gpt-4-1106-preview"))
            texts = [r.classifier_text for r in read.records]
            split = assign_splits([normalize_prompt(t) for t in texts], seed=SEED)
            rng = np.random.default_rng(SEED)
            train_idx = np.sort(rng.choice(np.flatnonzero(split == "train"), N_TRAIN, replace=False))
            test_idx = np.flatnonzero(split == "test")
            if len(test_idx) > N_TRAIN:  # a smaller run (ROUTER_NOTEBOOK_ROWS) judges on a sample of the test split
                test_idx = np.sort(rng.choice(test_idx, N_TRAIN, replace=False))
            cheap_passed = np.array([float(r.passed[read.cheap_model]) for r in read.records])
            strong_passed = np.array([float(r.passed[read.strong_model]) for r in read.records])
            print(f"{len(texts)} MMLU rows: training on {len(train_idx)} (of {int((split == 'train').sum())} train rows), "
                  f"testing on {len(test_idx)} held-out rows")
        '''),
        ("md", "## Embed (cached) and add the request features"),
        ("code", '''
            t0 = time.perf_counter()
            cache = default_cache_dir()
            embedder = OnnxEmbedder(export_embedder(cache_dir=cache), cache_dir=cache)
            idx = np.concatenate([train_idx, test_idx])
            emb = embedder.embed([texts[i] for i in idx])
            n_tokens = [embedder.encoder.count_tokens(read.records[i].full_text) for i in idx]
            X = feature_matrix(emb, [texts[i] for i in idx], n_tokens, features=DEFAULT_FEATURES)
            print(f"embedded {len(idx)} texts in {time.perf_counter() - t0:.0f}s "
                  f"({int(embedder.last_stats['from_cache'])} from the cache at {cache})")
            embedder.close()
            X_tr, X_te = X[: len(train_idx)], X[len(train_idx):]
            target = make_target("joint")
            y_tr = target.labels(cheap_passed[train_idx] >= 0.5, strong_passed[train_idx] >= 0.5)
            cheap_te, strong_te = cheap_passed[test_idx], strong_passed[test_idx]
            cheap_ok_te = cheap_loses_nothing(cheap_te, strong_te)  # observed: the cheap model lost nothing
        '''),
        ("md", "## Before and after calibration"),
        ("code", '''
            plain = LogisticRegression(C=0.3, max_iter=2000).fit(X_tr, y_tr)
            calibrated = CalibratedClassifierCV(
                LogisticRegression(C=0.3, max_iter=2000), method="sigmoid", cv=calibration_folds(5, SEED)
            ).fit(X_tr, y_tr)
            probs = {"before (plain logistic regression)": p_cheap_ok(plain, X_te, target),
                     "after (sigmoid calibration)": p_cheap_ok(calibrated, X_te, target)}

            fig, axes = plt.subplots(1, 2, figsize=(10, 4.5), sharey=True)
            rows = []
            for ax, (name, p) in zip(axes, probs.items()):
                b = M.reliability_bins(p, cheap_ok_te, n_bins=15)
                full = b.counts > 0
                ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
                ax.plot(b.mean_predicted[full], b.observed[full], "o-", label="router")
                for x, y, n in zip(b.mean_predicted[full], b.observed[full], b.counts[full]):
                    ax.annotate(str(n), (x, y), fontsize=7, xytext=(3, -9), textcoords="offset points")
                ece, brier = M.ece(p, cheap_ok_te, n_bins=15), M.brier(p, cheap_ok_te)
                ax.set_title(f"{name}\\nECE {ece:.3f}, Brier {brier:.3f}", fontsize=9)
                ax.set_xlabel("predicted p_cheap_ok")
                rows.append({"model": name, "ECE (15 bins)": ece, "Brier": brier, "AUC": M.auc(p, cheap_ok_te),
                             "mean p": p.mean(), "observed": cheap_ok_te.mean()})
            axes[0].set_ylabel("observed share where the cheap model lost nothing")
            axes[0].legend(loc="upper left", fontsize=8)
            fig.suptitle(f"Reliability on {len(test_idx)} held-out MMLU rows (numbers: rows per bin)", fontsize=10)
            fig.tight_layout()
            plt.show()
            display(pd.DataFrame(rows).round(4))
        '''),
        ("md", """
            ## Routing quality beside the baselines (same held-out rows)

            APGR: the average share of the cheap-to-strong quality gap recovered over all strong-call
            shares (random = 0.5; the oracle can exceed 1). CPT(p%): the strong-call share needed to
            recover p% of the gap (random ≈ p%). Definitions: shared/notes/METRICS.md.
        """),
        ("code", '''
            scores = {
                "router (calibrated)": 1.0 - probs["after (sigmoid calibration)"],
                "router (plain)": 1.0 - probs["before (plain logistic regression)"],
                "random (one draw)": random_scores(len(test_idx), seed=SEED),
                "heuristic (length/keywords)": heuristic_scores([texts[i] for i in test_idx]),
                "oracle": oracle_scores(cheap_te, strong_te),
            }
            table = pd.DataFrame([
                {"routing": name, "APGR": M.apgr(r, cheap_te, strong_te),
                 "CPT(50%)": M.cpt(r, cheap_te, strong_te, pct=50), "CPT(80%)": M.cpt(r, cheap_te, strong_te, pct=80)}
                for name, r in scores.items()
            ])
            display(table.round(3))
            print(f"n = {len(test_idx)} test prompts; cheap pass rate {cheap_te.mean():.3f}, strong {strong_te.mean():.3f}. "
                  "Random routing's APGR is 0.5 in expectation (std about 0.02 at this size).")
        '''),
        ("md", """
            Read the two tables together: calibration is there to make the probabilities honest (ECE),
            which matters because the serving threshold is a probability and `p_cheap_ok` is shown to
            users as a confidence. The ranking (AUC, APGR) may move a little as well, since the calibrated
            model averages five fits on 80% folds; judge such differences against the noise (about 0.02 APGR here).
        """),
    ],
)

# --------------------------------------------------------------------------- 03 choose a threshold

CHOOSE_THRESHOLD = (
    """
    # 03 — Choosing a threshold

    The cost-quality curve of a trained router on held-out rows, the point where it keeps 95% of
    always-strong quality with the fewest strong calls, and what that saves a month at a few volumes.
    Uses `artifacts/router` (or `$ROUTER_NOTEBOOK_MODEL_DIR`) when it exists (train it with
    `router-train`); otherwise trains a small router here on a 5,000-row sample into a temporary directory. Held-out rows are the pipeline's
    *test* split, recomputed the same way (split by normalised prompt text, seed 0).
    (`$ROUTER_NOTEBOOK_ROWS` sets another sample size.)
    """,
    {"mmlu": MMLU, "mtbench": MTBENCH},
    [
        ("code", '''
            import json
            import tempfile

            import matplotlib.pyplot as plt
            import numpy as np
            import pandas as pd

            from router_model.cost import PriceTable
            from router_model.cost_projection import monthly_cost, routed_monthly_cost
            from router_model.offline.log import read_logs
            from router_model.offline.metrics import expected_at_shares
            from router_model.offline.savings import compute_report, score_log
            from router_model.offline.split import assign_splits, normalize_prompt

            LOGS = [NEEDED["mmlu"], NEEDED["mtbench"]]
            CHEAP, STRONG = "mistralai/Mixtral-8x7B-Instruct-v0.1", "gpt-4-1106-preview"
            read = read_logs(LOGS, models=(CHEAP, STRONG))
            split = assign_splits([normalize_prompt(r.classifier_text) for r in read.records], seed=0)
            test_rows = [r for r, sp in zip(read.records, split) if sp == "test"]
            tmp = Path(tempfile.mkdtemp(prefix="router-nb03-"))  # nothing derived from the data enters the repo

            def write_rows(records, path):
                """Copy the original lines of `records` to a JSONL file (by file and line number)."""
                wanted = {}
                for r in records:
                    wanted.setdefault(r.source_file, set()).add(r.line_no)
                with open(path, "w", encoding="utf-8") as out:
                    for name, lines in wanted.items():
                        with open(name, encoding="utf-8") as f:
                            out.writelines(line for i, line in enumerate(f, 1) if i in lines)
                return path

            heldout = write_rows(test_rows, tmp / "heldout.jsonl")
            print(f"{read.rows_used} rows, {len(test_rows)} in the held-out test split")
        '''),
        ("md", "## The router: the trained artifact, or a small one trained now"),
        ("code", '''
            MODEL_DIR = Path(os.environ.get("ROUTER_NOTEBOOK_MODEL_DIR", REPO / "artifacts" / "router"))
            if (MODEL_DIR / "metadata.json").is_file():
                meta = json.loads((MODEL_DIR / "metadata.json").read_text())
                same_data = sorted(Path(f).name for f in meta["data"]["files"]) == sorted(p.name for p in LOGS)
                same_split = meta["data"].get("split_rows", {}).get("test") == len(test_rows)
                same_split = same_split and meta["goal"].get("threshold_rows") != "all"  # "all" refit on the test rows
                print(f"using {MODEL_DIR} ({meta['artifact_version']})")
                if not (same_data and same_split):
                    print("WARNING: this artifact was not trained on these files with this split; "
                          "the 'held-out' rows may include its training rows, which overstates its quality.")
            else:
                from training.data.public import PUBLIC_PRICE_AS
                from training.pipeline import TrainConfig, train

                rng = np.random.default_rng(0)
                n_sample = int(os.environ.get("ROUTER_NOTEBOOK_ROWS", 5000))
                sample = [read.records[i] for i in np.sort(rng.choice(len(read.records), n_sample, replace=False))]
                print(f"no model directory at {MODEL_DIR}: training a small router on {len(sample)} rows ...")
                MODEL_DIR = tmp / "router"
                train(TrainConfig(logs=(write_rows(sample, tmp / "sample.jsonl"),), out_dir=MODEL_DIR,
                                  cheap_model=CHEAP, strong_model=STRONG, heads=("logreg_c0.3",), threshold_rows="oof",
                                  price_as=tuple(PUBLIC_PRICE_AS.items()), track=False, progress=False))
                # The pipeline splits the sample by the same hash, and "oof" keeps the head off the test
                # split (the default, "all", refits on it after its evaluation): our test rows were never trained on.
        '''),
        ("md", "## Score the held-out rows and draw the cost-quality curve"),
        ("code", '''
            sc = score_log(MODEL_DIR, [heldout])  # classifier p_cheap_ok, per-request costs, rules
            VOLUME = 1_000_000
            rep = compute_report(sc, requests_per_month=VOLUME)
            shares = np.linspace(0, 1, 401)
            q_strong = sc.strong_passed.mean()
            routers = {"router": 1 - sc.p, "random": np.zeros(len(sc.p)), "oracle": sc.strong_passed - sc.cheap_passed}
            curves = {name: expected_at_shares(r, sc.cheap_passed, sc.strong_passed, cost_cheap=sc.cost_cheap,
                                               cost_strong=sc.cost_strong, shares=shares)
                      for name, r in routers.items()}

            def share_for(name, floor=0.95):
                """Smallest strong-call share whose quality is at least `floor` x always-strong."""
                q, c = curves[name]
                i = int(np.flatnonzero(q / q_strong >= floor - 1e-12)[0])
                return shares[i], q[i] / q_strong, c[i] * VOLUME

            x95, q95, c95 = share_for("router")
            fig, ax = plt.subplots(figsize=(7.5, 5))
            for (name, (q, c)), style in zip(curves.items(), ["-", "--", ":"]):
                ax.plot(c * VOLUME, q / q_strong, style, label=name)
            ax.axhline(0.95, color="grey", linewidth=0.7)
            ax.plot([c95], [q95], "s", color="red", label=f"95% quality: {x95:.0%} strong calls")
            ch = rep["chosen"]["router"]
            ax.plot([ch["monthly_cost"]], [ch["quality_vs_strong"]], "o", color="black",
                    label=f"router threshold {rep['chosen']['threshold']:.3f}: {ch['strong_share']:.0%} strong")
            ax.set_xlabel(f"monthly cost in $ at {VOLUME:,} requests/month")
            ax.set_ylabel("quality relative to always-strong")
            ax.set_title(f"Cost vs quality on {len(sc.p)} held-out rows", fontsize=10)
            ax.legend(loc="lower right", fontsize=8)
            plt.show()
            for name in ("router", "random", "oracle"):
                x, q, c = share_for(name)
                print(f"{name:>7}: 95% of always-strong quality at {x:.1%} strong calls (${c:,.0f}/month)")
            print("notes:", *rep["notes"], sep="\\n  ")
        '''),
        ("md", """
            ## Monthly savings at a few volumes

            With `router_model.cost` (the dated price table) on this log's mean tokens per request.
            Cheap share = the share of calls the router sends to the cheap model at that operating point.
            The models here are not in the price table; the router records that they were priced as
            gpt-4o-mini / gpt-4o (`--price-as`), and the report uses that mapping and says so.
        """),
        ("code", '''
            pd.set_option("display.width", 200)
            from training.data.public import PUBLIC_PRICE_AS

            table = PriceTable.load(price_as=PUBLIC_PRICE_AS)
            pair = table.pricing_for_pair(sc.cheap_model, sc.strong_model)
            tin, tout = sc.input_tokens.mean(), sc.output_tokens.mean()
            points = {"router threshold": 1 - ch["strong_share"], "95% quality": 1 - x95}
            rows = []
            for volume in (100_000, 1_000_000, 10_000_000):
                strong_cost = monthly_cost(pair.strong, volume, tin, tout)
                row = {"requests/month": f"{volume:,}", "always strong": strong_cost,
                       "always cheap": monthly_cost(pair.cheap, volume, tin, tout)}
                for name, cheap_share in points.items():
                    routed = routed_monthly_cost(pair.cheap, pair.strong, volume, tin, tout, 0.0, cheap_share)
                    row[f"{name}: cost"] = routed
                    row[f"{name}: saved"] = strong_cost - routed
                rows.append(row)
            display(pd.DataFrame(rows).set_index("requests/month").round(0))
            print(f"mean tokens per request: {tin:.0f} in + {tout:.0f} out; "
                  + "; ".join(f"{k}: {v:.1%} cheap calls" for k, v in points.items()))
            print("Per-request costs (router_model.offline.savings) differ from this mean-token estimate only through the token mix "
                  f"of the rows sent cheap: at the router threshold ${ch['saved_vs_strong']:,.0f} vs "
                  f"${rows[1]['router threshold: saved']:,.0f} saved a month at 1M requests.")
        '''),
    ],
)
