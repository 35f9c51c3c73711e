"""Build `movielens_full_pipeline.ipynb` from the cells below, without outputs.

    python notebooks/build_notebook.py              # rewrite the notebook next to this file
    python notebooks/build_notebook.py --out X.ipynb

Edit the cells here, not in Jupyter, then rerun: the same script always writes the same
bytes (fixed cell ids, no outputs), and `tests/test_notebook.py` checks that the committed
notebook is exactly what this script writes. The notebook only calls the `recfunnel`
package; no model code lives in it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

NOTEBOOK = Path(__file__).with_name("movielens_full_pipeline.ipynb")

CELLS: list[tuple[str, str, str]] = []  # (kind, cell id, source)


def md(cell_id: str, source: str) -> None:
    CELLS.append(("markdown", cell_id, source.strip()))


def code(cell_id: str, source: str) -> None:
    CELLS.append(("code", cell_id, source.strip()))


# ----------------------------------------------------------------------------- 0. set-up

md(
    "title",
    """
# A multi-stage recommender, end to end, on MovieLens-1M

A recommender in production does not score every item with its best model: there are too
many items and too little time. It works as a **funnel** of stages, each looking at fewer
candidates with a more expensive model than the one before:

| stage | list (default config) | model here | cost per candidate |
|---|---|---|---|
| **recall** | 3,706 movies -> 200 | two-tower model + ANN index | one dot product per movie |
| **pre-rank** | 200 -> 100 | small MLP on the recall vectors | a tiny MLP |
| **rank** | 100, re-sorted | deep CTR model (DIN + DCN-v2) | all features, attention over history |
| **re-rank** | 100 -> 20 | MMR (diversity) | similarities within the list |

Why stages? The cost of scoring one candidate grows at each step, and the number of candidates
shrinks faster. Industry catalogues hold millions of items; a ranker that takes a millisecond
per item could never see them all, but it can see the hundred that cheaper stages picked. The
price is that a stage can only re-order what the stage before it kept: whatever recall
misses is lost for good.

This notebook **uses** the `recfunnel` package (no model code lives here): it looks at the
data, explains the temporal split, trains the funnel exactly as `recfunnel train` does,
evaluates it exactly as `recfunnel evaluate` does, and opens up one user's recommendations.
""",
)

md(
    "colab-intro",
    """
**Running on Colab?** The next cell installs the package from its git repository. Set the
repository's URL first, in a cell above it:
`import os; os.environ["RECFUNNEL_REPO_URL"] = "https://..."`. Locally the cell does nothing:
install the package with `make install` and start Jupyter from the virtual environment.
""",
)

code(
    "colab",
    """
import os
import subprocess
import sys

REPO_URL = os.environ.get("RECFUNNEL_REPO_URL", "")
if "google.colab" in sys.modules:
    if not REPO_URL:
        raise RuntimeError(
            "Set RECFUNNEL_REPO_URL to the recfunnel git repository before running this cell, "
            'e.g. os.environ["RECFUNNEL_REPO_URL"] = "https://github.com/<owner>/<repo>.git"'
        )
    # If pip upgrades numpy or pandas here, restart the runtime and run from the top.
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", f"recfunnel @ git+{REPO_URL}"],
        check=True,
    )
""",
)

md(
    "params-intro",
    """
## Parameters

- `MODE = "full"` (the default) trains on the real MovieLens-1M with the package's default
  config, so every number below is the one `make run` (`recfunnel train` then
  `recfunnel evaluate`) prints for the same seed. The data come from `$RECFUNNEL_DATA_DIR`,
  or are downloaded from GroupLens. Training takes several minutes on a laptop CPU.
- `MODE = "fast"` writes a small synthetic data set in ML-1M's format (600 users, 400 movies,
  with structure planted to be learnt) and trains tiny models: the whole notebook runs in
  well under two minutes. Its numbers only show the mechanics; do not read them as results.

Choose the mode with the environment variable `RECFUNNEL_NOTEBOOK_MODE` before starting the
kernel, or edit the cell.
""",
)

code(
    "params",
    """
import tempfile
from pathlib import Path

MODE = os.environ.get("RECFUNNEL_NOTEBOOK_MODE", "full")  # "full" or "fast"
SEED = 0  # every stage's seed (the package default) and the random split of section 2
TOPK_FINAL = 20  # length of the final list

if MODE == "fast":
    from recfunnel.data.synthetic import write_synthetic_movielens
    from recfunnel.run import SMOKE_OVERRIDES

    WORK_DIR = Path(tempfile.mkdtemp(prefix="recfunnel-notebook-"))
    DATA_DIR = write_synthetic_movielens(WORK_DIR / "data")
    CACHE_DIR = WORK_DIR / "cache"  # parsed tables; keeps the user's cache clean
    RUN_DIR = WORK_DIR / "run"
    TOPK_RECALL = 50
    OVERRIDES = list(SMOKE_OVERRIDES)  # tiny models, the same as the test suite's
elif MODE == "full":
    env_dir = os.environ.get("RECFUNNEL_DATA_DIR")
    DATA_DIR = Path(env_dir) if env_dir else None  # None: the package downloads ML-1M
    CACHE_DIR = None  # $RECFUNNEL_CACHE_DIR, else ~/.cache/recfunnel
    RUN_DIR = Path("runs/notebook-full")
    TOPK_RECALL = 200
    OVERRIDES = []  # the defaults, as `make run`
else:
    raise ValueError(f'RECFUNNEL_NOTEBOOK_MODE must be "full" or "fast", got {MODE!r}')

# The options every `recfunnel` command below gets, so the CLI reads the same data.
DATA_ARGS = ["--data-dir", str(DATA_DIR)] if DATA_DIR is not None else []
if CACHE_DIR is not None:
    DATA_ARGS += ["--cache-dir", str(CACHE_DIR)]
print(f"MODE = {MODE}, data: {DATA_DIR or 'download'}, run directory: {RUN_DIR}")
""",
)

# ----------------------------------------------------------------------------- 1. data

md(
    "data-intro",
    """
## 1. The data and its quirks

MovieLens-1M holds 1,000,209 ratings (1 to 5 stars) of 3,706 movies by 6,040 users, who each
rated at least 20 movies. Following the project's protocol, a rating of 4 or more counts as
**liked**: that is what the funnel tries to predict. `load_movielens` parses and validates the
three files (and caches them); `dataset_stats` gives the headline numbers.
""",
)

code(
    "data-load",
    """
import matplotlib.dates as mdates
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import Image, Markdown, display
from matplotlib.ticker import NullFormatter, ScalarFormatter

from recfunnel.data import dataset_stats, load_movielens

ml = load_movielens(DATA_DIR, cache_dir=CACHE_DIR, progress=False)
stats = dataset_stats(ml)
pd.Series(stats, name="value").to_frame()
""",
)

md(
    "data-plots-intro",
    """
Four things about these data shape every model below:

- **ratings lean positive**: most are 3 to 5 stars, so "liked" is the majority label;
- **a long tail**: a few blockbusters collect a large share of all ratings, so popularity
  alone is a strong baseline and a model must work to recommend anything else;
- **time is uneven**: most ratings arrived in 2000, when users rated dozens of films in their
  first sessions; 2001 to 2003 is a sparse tail of fewer, returning users. The last 10 % of
  the ratings (the test part) therefore spans many months;
- **users differ a lot** in activity: a few rated thousands of movies, most a few dozen.
""",
)

code(
    "data-plots",
    """
ratings = ml.ratings
fig, axes = plt.subplots(2, 2, figsize=(12, 8))

counts = ratings["rating"].value_counts().sort_index()
colors = ["tab:green" if r >= 4 else "tab:gray" for r in counts.index]
axes[0, 0].bar(counts.index, counts.to_numpy(), color=colors)
axes[0, 0].set(title="Rating distribution (green: liked)", xlabel="stars", ylabel="ratings")

per_movie = ratings["item_id"].value_counts().to_numpy()  # descending
n_top = max(1, len(per_movie) // 10)
top_share = per_movie[:n_top].sum() / per_movie.sum()
axes[0, 1].plot(np.arange(1, len(per_movie) + 1), per_movie)
axes[0, 1].axvline(n_top, color="tab:gray", linestyle="--")
axes[0, 1].set_yscale("log")
axes[0, 1].set(
    title=f"Long tail: the top tenth of the movies get {top_share:.0%} of the ratings",
    xlabel="movie, by number of ratings",
    ylabel="ratings (log scale)",
)

when = pd.to_datetime(ratings["timestamp"], unit="s")
per_day = when.dt.floor("D").value_counts().sort_index()
axes[1, 0].plot(per_day.index, per_day.to_numpy(), linewidth=0.7)
axes[1, 0].set_yscale("log")
axes[1, 0].set(title="Ratings per day", ylabel="ratings (log scale)")
locator = mdates.AutoDateLocator()
axes[1, 0].xaxis.set(major_locator=locator, major_formatter=mdates.ConciseDateFormatter(locator))

per_user = ratings["user_id"].value_counts()
bins = np.logspace(np.log10(per_user.min()), np.log10(per_user.max()), 40)
axes[1, 1].hist(per_user, bins=bins)
axes[1, 1].set_xscale("log")
axes[1, 1].xaxis.set(major_formatter=ScalarFormatter(), minor_formatter=NullFormatter())
axes[1, 1].set(title="Ratings per user", xlabel="ratings (log scale)", ylabel="users")
fig.tight_layout()
plt.show()

share_2000 = (when.dt.year == 2000).mean()
display(
    Markdown(
        f"{share_2000:.0%} of the ratings were made in 2000. The median user rated "
        f"{per_user.median():.0f} movies, the most active {per_user.max():,}; the median "
        f"movie has {np.median(per_movie):.0f} ratings, the most rated {per_movie[0]:,}."
    )
)
""",
)

# ----------------------------------------------------------------------------- 2. split

md(
    "split-intro",
    """
## 2. The temporal split, and why a random split leaks

A deployed recommender learns from the past and serves the future. The protocol's split
does the same: all ratings sorted by time, the first 80 % are **train**, the next 10 %
**valid** (for early stopping and choices), the last 10 % **test**. Users whose first
rating falls after train are **cold**: the models have never seen them, as in real life.
""",
)

code(
    "split-temporal",
    """
from recfunnel.data.split import Split, make_split


def describe(split: Split) -> pd.DataFrame:
    rows = []
    train_users = set(split.train["user_id"])
    for name in ("train", "valid", "test"):
        part = split.part(name)
        stamps = pd.to_datetime(part["timestamp"], unit="s")
        users = set(part["user_id"])
        rows.append(
            {
                "part": name,
                "ratings": len(part),
                "users": len(users),
                "users not in train (cold)": len(users - train_users),
                "first": stamps.min().date(),
                "last": stamps.max().date(),
            }
        )
    return pd.DataFrame(rows).set_index("part")


split = make_split(ml.ratings, "global")
describe(split)
""",
)

md(
    "split-random-intro",
    """
What if we split at random instead, as many tutorials do? Then train holds ratings made
*after* the test ratings it is asked to predict: the model learns which movies people went
on to watch, which films became popular later, and each user's later taste. Nothing like that
is available when serving, so the numbers come out better than any deployment would see.

Below, the same model (EASE, a strong closed-form item-to-item baseline, fitted in seconds)
is trained and evaluated twice with the protocol's evaluator: on a seeded random 80/10/10
split, and on the temporal split. The two rows do not judge the same users (the random
split spreads test over everyone and has no cold users at all), which is part of the point:
a random split also hides the cold-start problem.
""",
)

code(
    "split-random",
    """
from recfunnel.evaluation.baselines import EASE
from recfunnel.evaluation.protocol import Evaluator, catalogue

order = np.random.default_rng(SEED).permutation(len(ml.ratings))
cut_train, cut_valid = int(0.8 * len(order)), int(0.9 * len(order))
random_parts = [
    ml.ratings.iloc[np.sort(rows)].reset_index(drop=True)
    for rows in np.split(order, [cut_train, cut_valid])
]
random_split = Split(*random_parts, kind="global")  # the type has no "random" kind

items = catalogue(ml.ratings)
results = {}
for name, candidate in (("random 80/10/10", random_split), ("temporal (protocol)", split)):
    model = EASE().fit(candidate.train, items)
    groups = Evaluator(candidate, items, ks=(20,)).evaluate(model, "test").groups
    results[name] = {
        "warm users": int(groups["warm"]["users"]),
        "cold users": int(groups["cold"]["users"]),
        "NDCG@20": groups["warm"]["ndcg@20"],
        "Recall@20": groups["warm"]["recall@20"],
    }
leak = pd.DataFrame.from_dict(results, orient="index")
display(leak.round(4))

# How much of the random split's train comes, for a test user, after their first test rating?
first_test = random_split.test.groupby("user_id")["timestamp"].min()
theirs = random_split.train[random_split.train["user_id"].isin(first_test.index)]
later = theirs["timestamp"].to_numpy() > first_test.loc[theirs["user_id"]].to_numpy()
random_ndcg, temporal_ndcg = leak["NDCG@20"]
random_recall, temporal_recall = leak["Recall@20"]
display(
    Markdown(
        f"On the random split EASE reaches NDCG@20 **{random_ndcg:.4f}** and Recall@20 "
        f"**{random_recall:.4f}**; on the temporal split {temporal_ndcg:.4f} and "
        f"{temporal_recall:.4f}. In the random split, {later.mean():.0%} of the train ratings "
        "of test users were made *after* their first test rating: the model has seen the "
        "future it is asked to predict."
    )
)
""",
)

# ----------------------------------------------------------------------------- 3. training

md(
    "train-intro",
    """
## 3. Training the funnel

One command trains every stage: `recfunnel train`. The notebook calls the CLI's `main`
function with the same arguments, so the run directory is exactly what the command line
writes (resolved config, manifest, each stage's weights and training log, the item index).

The subtle part of training a funnel is **stacking**. Pre-rank and rank read the recall
model's logit as a feature. Had recall been trained on the very likes they learn from, its
logits there would be too good (it has memorised them), and the later stages would learn to
over-trust a signal that is weaker at serving time. So train is cut in time:

```
train ratings, by time:  [ ---------- early (80 %) ---------- | -- slice (20 %) -- ]
                           recall learns here                   pre-rank and rank learn here
```

- **Recall** (the two-tower model) learns on the early 80 % of train only.
- For each user who comes back to rate in the slice after a pause of at least a day, a
  request is **replayed**: their history is everything before the return, "now" is the
  moment they return, and what they rated from then on is the target. That is exactly what a
  test user looks like: a known history, a pause, then a future.
- The recall model, which never saw the slice, proposes its candidates for each replayed
  request; labelled with what the user did next (liked or not), they are the training pairs.
  Pre-rank learns on the candidates only (all it ever sees when serving); rank also learns
  from the rated movies recall missed.
- Rank also reads the pre-rank logit. To keep that input out of sample too, it is
  **cross-fitted**: slice users are split into folds and each fold's pre-rank logits come
  from a model trained on the other folds.
- Finally recall's popularity inputs are refreshed to the end of train and its item vectors
  go into the ANN index. Every stage stops early on its metric on the valid part.
""",
)

code(
    "train",
    """
import json

from recfunnel.cli import main as recfunnel_cli

SEED_ARGS = [f"--{stage}.seed={SEED}" for stage in ("recall.two_tower", "prerank", "rank")]
train_args = ["train", "--out", str(RUN_DIR), "--overwrite", "--no-progress"]
status = recfunnel_cli([*train_args, *DATA_ARGS, *OVERRIDES, *SEED_ARGS])
assert status == 0, "recfunnel train failed: see the message above"

manifest = json.loads((RUN_DIR / "manifest.json").read_text())
replay = manifest["stacking_examples"]
slice_start = pd.to_datetime(replay["slice_start"], unit="s").date()
display(
    Markdown(
        f"The slice starts on {slice_start} and holds {replay['slice_ratings']:,} train "
        f"ratings. {replay['requests']:,} returning users' requests were replayed and "
        f"{replay['like_pair_requests']:,} other slice users lent their rated pairs to the "
        f"like head, giving {replay['examples']:,} labelled (request, movie) pairs, "
        f"{replay['positives']:,} of them liked; {replay['from_candidates']:,} pairs were "
        "proposed by recall."
    )
)
""",
)

md(
    "curves-intro",
    """
Each stage's training log (`RUN_DIR/<stage>/train_log.json`; for recall, its two-tower
channel's, `RUN_DIR/recall/two_tower/train_log.json`) records the training loss and
the valid metric it early-stops on after every epoch; the dotted line marks the epoch whose
weights were kept.
""",
)

code(
    "curves",
    """
fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
for ax, stage in zip(axes, ("recall/two_tower", "prerank", "rank"), strict=True):
    log = json.loads((RUN_DIR / stage / "train_log.json").read_text())
    epochs = [e["epoch"] for e in log["epochs"]]
    metric = log["metric"]
    ax.plot(epochs, [e["loss"] for e in log["epochs"]], marker="o", color="tab:blue")
    ax.set(xlabel="epoch", xticks=epochs)
    ax.set_ylabel("train loss", color="tab:blue")
    valid = ax.twinx()
    valid.plot(epochs, [e[metric] for e in log["epochs"]], marker="s", color="tab:orange")
    valid.set_ylabel(f"valid {metric}", color="tab:orange")
    ax.axvline(log["best_epoch"], color="tab:gray", linestyle=":")
    ax.set_title(f"{stage}: best valid {metric} {log['best_metric']:.4f}")
fig.tight_layout()
plt.show()
""",
)

# ----------------------------------------------------------------------------- 4. evaluation

md(
    "eval-intro",
    """
## 4. Evaluating every stage on the future

`recfunnel evaluate RUN_DIR` serves every evaluated test user (a warm user: a train rating
and a liked test rating) through the whole funnel, as of the end of train, with their train
and valid ratings as history and those movies removed from the candidates. Each stage's
output list is then scored *as if it were the final recommendation*, against the movies the
user went on to like in test. It writes `report.json`, `report.md` and three plots into the
run directory; everything below is read from `report.json`, so it matches the command line.
""",
)

code(
    "evaluate",
    """
import contextlib
import io

with contextlib.redirect_stdout(io.StringIO()):  # the same tables are in report.md
    status = recfunnel_cli(["evaluate", str(RUN_DIR), "--no-progress", *DATA_ARGS])
assert status == 0, "recfunnel evaluate failed: see the message above"

report = json.loads((RUN_DIR / "report.json").read_text())
stages = report["stages"]
print(sorted(p.name for p in RUN_DIR.iterdir() if p.is_file()))
print(f"evaluated on {report['part']}: {report['users']['warm']:,} warm users")
""",
)

md(
    "recall-stage",
    """
### Recall: find the needles

*In industry* recall narrows millions of items to a few hundred in milliseconds, so it must
be cheap: a **two-tower** model embeds the user and each item separately, the item vectors
are computed once and stored in an approximate-nearest-neighbour (ANN) index, and a request
is one vector lookup. Often several recall sources are merged.

*Here* the user tower reads demographics and the movies the user liked, the item tower reads
the movie id, genres, release year and causal popularity. It learns on the early 80 % of
train (liked vs random and disliked movies) and early-stops on valid recall. What matters is
**recall@K** at its cut-off: the share of the user's future likes that are still in the list.
Its own top 20 is not what it was built for.
""",
)

code(
    "recall-numbers",
    """
recall = stages["recall"]
k_recall = recall["candidates"]
display(
    Markdown(
        f"Among its **{k_recall}** candidates the recall stage finds "
        f"**{recall[f'recall@{k_recall}']:.1%}** of each user's liked test movies on average "
        f"(recall@{k_recall}). Read as a final list, its top 20 scores NDCG@20 "
        f"{recall['ndcg@20']:.4f} and Recall@20 {recall['recall@20']:.4f}."
    )
)
""",
)

md(
    "prerank-stage",
    """
### Pre-rank: a cheap cut

*In industry* the ranker cannot afford every recall candidate, so a light model (often a
small MLP or even a distilled two-tower) cuts the list to what the ranker's latency budget
allows. Its job is not to order well but to **keep the hits**.

*Here* a small MLP reads only what recall already computed (the user and item vectors, their
product, the recall logit) plus an item-to-item score, and keeps the best-scored candidates.
It learns on the replayed slice requests and is judged by **retention**: the share of
recall's hits (liked test movies among its candidates) that survive the cut.
""",
)

code(
    "prerank-numbers",
    """
prerank = stages["prerank"]
k_keep = prerank["candidates"]
display(
    Markdown(
        f"Pre-rank keeps **{k_keep}** of the {k_recall} candidates and with them "
        f"**{prerank['retention']:.1%}** of recall's hits (recall@{k_keep} "
        f"{prerank[f'recall@{k_keep}']:.4f}, against {recall[f'recall@{k_recall}']:.4f} "
        f"before the cut), at {prerank['latency_ms_per_user']:.2f} ms per user."
    )
)
""",
)

md(
    "rank-stage",
    """
### Rank: the expensive model that orders the list

*In industry* this is the CTR model: every feature of the user, the item and the context,
crossed together, trained on logged impressions. It sees only the survivors of pre-rank, so
it can be large.

*Here* it is a **DIN + DCN-v2** model: DIN attends over the user's recently liked movies with
weights that depend on the candidate, DCN-v2 learns explicit feature crosses, and the recall
and (cross-fitted) pre-rank logits come in as features. It has two heads, P(rated | candidate)
and P(liked | rated), and ranks by their product. Its list is judged by **NDCG@20**; its
like head is also judged pointwise, like a CTR model, on every rated test pair: **AUC**,
**GAUC** (AUC per user, averaged) and **LogLoss**. The recall row's LogLoss is not
meaningful: a cosine logit is not a calibrated probability.
""",
)

code(
    "rank-numbers",
    """
rank = stages["rank"]
display(
    Markdown(
        f"Rank re-orders the {rank['candidates']} survivors: NDCG@20 **{rank['ndcg@20']:.4f}** "
        f"(recall's own top 20: {recall['ndcg@20']:.4f}, pre-rank's: {prerank['ndcg@20']:.4f})."
    )
)
pointwise = pd.DataFrame(report["pointwise"]).T[["auc", "gauc", "logloss"]]
pointwise.columns = ["AUC", "GAUC", "LogLoss"]
pointwise.round(4)
""",
)

md(
    "rerank-stage",
    """
### Re-rank: the page the user sees

*In industry* the last stage turns a ranked list into a page: diversity, freshness,
business rules, de-duplication. A list of twenty near-identical sequels is accurate and
useless.

*Here* it is **MMR** (Maximal Marginal Relevance) over genres: it picks the final list
greedily, trading the ranker's score against similarity to the movies already picked.
**ILD@20** (intra-list diversity: the mean genre distance between pairs in the list) measures
what it buys; NDCG@20 what it costs.
""",
)

code(
    "rerank-numbers",
    """
rerank = stages["rerank"]
display(
    Markdown(
        f"With lambda = {report['rerank']['lambda_mmr']}, MMR moves ILD@20 from "
        f"{rank['ild@20']:.4f} (the ranker's top 20) to **{rerank['ild@20']:.4f}**, and "
        f"NDCG@20 from {rank['ndcg@20']:.4f} to **{rerank['ndcg@20']:.4f}**."
    )
)
""",
)

md(
    "table-intro",
    """
### The whole funnel in one table

Every row is one list scored the same way on the same users: each stage's output, then the
two baselines (the most liked movies of train, and EASE) fitted on train and given the same
history. Latency is the stage's wall time per user, for the whole batch of test users.
""",
)

code(
    "table",
    """
columns = [
    "candidates",
    "ndcg@20",
    "recall@20",
    "precision@20",
    "hit_rate@20",
    "ild@20",
    "retention",
    "latency_ms_per_user",
]
rows = {**stages, **{f"baseline: {name}": row for name, row in report["baselines"].items()}}
pd.DataFrame.from_dict(rows, orient="index").reindex(columns=columns).round(4)
""",
)

md(
    "funnel-plot-intro",
    """
`funnel.png` draws the same story: how many candidates each stage hands on, and how many of
the users' future likes are still among them.
""",
)

code(
    "funnel-plot",
    """
display(Image(filename=str(RUN_DIR / "funnel.png")))
""",
)

# ----------------------------------------------------------------------------- 5. one user

md(
    "user-intro",
    """
## 5. One user through the funnel

`Pipeline.load` opens the run directory once; `recommend_for_user` answers one user and
`recommend_batch` many. A user's history is everything known when serving (their train and
valid ratings). We pick a warm test user deterministically: the smallest user id among the
users the evaluation scores.
""",
)

code(
    "user-history",
    """
from recfunnel.serving.recommender import Pipeline

pipe = Pipeline.load(RUN_DIR, ml)
uid = int(Evaluator(split, items).users("test", "warm").user_ids.min())

movies = ml.items.set_index("item_id")
known = split.known_history("test")
test = split.test
future_likes = set(test.loc[(test["user_id"] == uid) & (test["rating"] >= 4), "item_id"])


def title(movie_id: int) -> str:
    year = movies.at[movie_id, "year"]
    name = movies.at[movie_id, "title"]
    return name if pd.isna(year) else f"{name} ({year})"


mine = known[(known["user_id"] == uid) & (known["rating"] >= 4)].sort_values("timestamp")
print(f"user {uid}: {len(mine)} liked movies known, {len(future_likes)} liked in test")
pd.DataFrame(
    {
        "date": pd.to_datetime(mine["timestamp"], unit="s").dt.date,
        "title": [title(m) for m in mine["item_id"]],
        "genres": movies.loc[mine["item_id"], "genres"].to_numpy(),
        "stars": mine["rating"].to_numpy(),
    }
).tail(10).reset_index(drop=True)
""",
)

md(
    "user-stages-intro",
    """
Each stage's list for this user, top 10 (a star marks a movie the user went on to like in
test). `recommend_batch` returns every stage's `Candidates`: `items` holds catalogue
positions (-1 pads a short list), which `pipe.funnel.item_ids` maps to movie ids.
""",
)

code(
    "user-stages",
    """
lists = pipe.recommend_batch(np.array([uid]), topk_recall=TOPK_RECALL, topk_final=TOPK_FINAL)


def top_titles(positions: np.ndarray, n: int = 10) -> pd.Series:
    ids = pipe.funnel.item_ids[positions[positions >= 0][:n]]
    marked = [("* " if m in future_likes else "") + title(m) for m in ids]
    return pd.Series(marked, index=range(1, len(marked) + 1))


pd.DataFrame({stage: top_titles(cands.items[0]) for stage, cands in lists.items()})
""",
)

md(
    "user-rec-intro",
    """
`recommend_for_user` gives the final list with titles, genres and, for each movie, every
stage's score and position: you can see where the re-ranker promoted a movie for variety.
`path` says how the user was served.
""",
)

code(
    "user-rec",
    """
rec = pipe.recommend_for_user(uid, topk_recall=TOPK_RECALL, topk_final=TOPK_FINAL)


def as_table(rec) -> pd.DataFrame:
    rows = []
    for item in rec.items:
        row = {"rank": item.rank, "title": item.title, "genres": item.genres}
        row["liked in test"] = item.movie_id in future_likes
        row.update({f"{stage} score": score for stage, score in item.scores.items()})
        row.update({f"{stage} pos": pos for stage, pos in item.positions.items()})
        rows.append(row)
    return pd.DataFrame(rows).set_index("rank").round(3)


print(f"path: {rec.path}, ILD@{len(rec.items)}: {rec.ild:.4f}, list sizes: {rec.candidates}")
as_table(rec)
""",
)

md(
    "cold-intro",
    """
Two fallbacks, both flagged in `path`. A user in `users.dat` with no known rating yet goes
through the same funnel on demographics and item features alone (`"cold"`); an id the
system has never heard of gets the most liked movies of train (`"popularity"`).
""",
)

code(
    "cold",
    """
cold_users = sorted(set(ml.users["user_id"]) - set(known["user_id"]))
if cold_users:
    cold = pipe.recommend_for_user(cold_users[0], topk_recall=TOPK_RECALL, topk_final=5)
    print(f"user {cold.user_id}: path {cold.path!r}")
    display(as_table(cold))
else:
    print("every user in users.dat has a known rating: no cold user to show")

unknown = pipe.recommend_for_user(10**9, topk_recall=TOPK_RECALL, topk_final=5)
print(f"user {unknown.user_id}: path {unknown.path!r}")
as_table(unknown)
""",
)

# ----------------------------------------------------------------------------- 6. lambda

md(
    "lambda-intro",
    """
## 6. The lambda trade-off

MMR builds the list one pick at a time, choosing the candidate that maximises

    lambda * relevance - (1 - lambda) * max similarity to the movies already picked

where relevance is the ranker's score scaled to [0, 1] per user and similarity is the cosine
of genre vectors. lambda = 1 keeps the ranker's order; lambda = 0 only seeks variety. The
evaluation sweeps lambda over the same ranked lists: accuracy (NDCG@20) against diversity
(ILD@20).
""",
)

code(
    "lambda",
    """
display(Image(filename=str(RUN_DIR / "lambda_sweep.png")))
pd.DataFrame(report["lambda_sweep"]).set_index("lambda").round(4)
""",
)

md(
    "lambda-user-intro",
    """
The same trade-off for our user: the top 10 at three values of lambda.
""",
)

code(
    "lambda-user",
    """
by_lambda = {}
for lam in (1.0, report["rerank"]["lambda_mmr"], 0.0):
    r = pipe.recommend_for_user(uid, topk_recall=TOPK_RECALL, topk_final=10, lambda_mmr=lam)
    picks = [f"{i.title} [{i.genres}]" for i in r.items]
    by_lambda[f"lambda {lam} (ILD {r.ild:.2f})"] = pd.Series(picks, index=range(1, len(picks) + 1))
pd.DataFrame(by_lambda)
""",
)

# ----------------------------------------------------------------------------- 7. wrap-up

md(
    "summary-intro",
    """
## 7. What each stage added

Read from this run's report (so it holds for whichever mode ran):
""",
)

code(
    "summary",
    """
baselines = report["baselines"]
best_name = max(baselines, key=lambda name: baselines[name]["ndcg@20"])
best = baselines[best_name]["ndcg@20"]
final = rerank["ndcg@20"]


def change(before: float, after: float) -> str:
    return f"{before:.4f} -> {after:.4f} ({after - before:+.4f})"


display(
    Markdown(
        "\\n".join(
            [
                f"- **Recall** narrowed {stats['n_items_rated']:,} movies to {k_recall} and "
                f"kept {recall[f'recall@{k_recall}']:.1%} of the users' future likes.",
                f"- **Pre-rank** cut {k_recall} to {k_keep} and kept "
                f"{prerank['retention']:.1%} of recall's hits.",
                "- **Rank** re-ordered the survivors: NDCG@20 "
                f"{change(prerank['ndcg@20'], rank['ndcg@20'])} over pre-rank's order.",
                "- **Re-rank** diversified the final list: ILD@20 "
                f"{change(rank['ild@20'], rerank['ild@20'])}, at NDCG@20 "
                f"{change(rank['ndcg@20'], final)}.",
                f"- End to end, the funnel's NDCG@20 is {final:.4f}; the best baseline "
                f"({best_name}) scores {best:.4f}: the funnel is "
                f"{'ahead by' if final >= best else 'behind by'} {abs(final - best):.4f}.",
            ]
        )
    )
)
""",
)

md(
    "next",
    """
**Where to go next**

- `recfunnel config` lists every setting with its default; change one on the command line,
  e.g. `recfunnel train --recall.two_tower.objective=softmax --rerank.similarity=embedding`, and
  compare the reports.
- `recfunnel evaluate --model pop,ease` gives the baselines alone under the protocol;
  `--protocol per_user` the per-user temporal split.
- `recfunnel recommend RUN_DIR --user 42` prints one user's list from the shell;
  `recfunnel bench RUN_DIR` times `recommend_for_user`.
- The package's README and `shared/docs/protocol.md` describe the protocol and every stage in
  more depth; the module docstrings (`recfunnel.training.stacking`, `recfunnel.training.recipe`,
  `recfunnel.rank.model`, `recfunnel.rerank`) explain each design choice.
""",
)


def build() -> nbformat.NotebookNode:
    """The notebook, cells in order, with fixed ids and no outputs."""
    nb = new_notebook(
        metadata={
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
        }
    )
    nb.nbformat_minor = 5  # pinned: the committed file must not change with nbformat
    for kind, cell_id, source in CELLS:
        cell = new_markdown_cell(source) if kind == "markdown" else new_code_cell(source)
        cell.id = cell_id
        nb.cells.append(cell)
    nbformat.validate(nb)
    return nb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=NOTEBOOK, help="notebook file to write")
    args = parser.parse_args()
    nbformat.write(build(), args.out)
    print(args.out)


if __name__ == "__main__":
    main()
