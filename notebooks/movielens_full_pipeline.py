# ---
# jupyter:
#   jupytext:
#     cell_metadata_filter: -all
#     formats: ipynb,py:percent
#     notebook_metadata_filter: kernelspec,language_info
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
#   language_info:
#     name: python
# ---

# %% [markdown]
# # A multi-stage recommender, built step by step, on MovieLens-1M
#
# A recommender in production does not score every item with its best model: there are too
# many items and too little time. It works as a **funnel** of stages, each looking at fewer
# candidates with a more expensive model than the one before:
#
# | stage | list (default config) | model here | cost per candidate |
# |---|---|---|---|
# | **recall** | 3,706 movies -> 200 | 4 channels (two-tower + ANN, ...), merged | a dot product |
# | **pre-rank** | 200 -> 100 | small MLP on what recall computed | a tiny MLP |
# | **rank** | 100, re-sorted | deep CTR model (DIN + DCN-v2) | all features, attention |
# | **re-rank** | 100 -> 20 | ILD greedy, MMR or DPP (diversity) | similarities within the list |
#
# The cost of scoring one candidate grows at each step, and the number of candidates shrinks
# faster. A ranker that takes a millisecond per item could never see a million items, but it
# can see the hundred that cheaper stages picked. The price: a stage can only re-order what
# the stage before it kept. Whatever recall misses is lost for good.
#
# This notebook **builds the funnel with the package's Python API**, one stage at a time, the
# way `recfunnel.training.recipe.train_funnel` does it (and `recfunnel train` calls that). You
# see each model, its loss or formula, its list moving to the next stage, and its number on
# the held-out future. The last section trains the same funnel in one call and checks that
# the numbers are the same, and the same as the command line's.
#
# Boxes marked **Try this** are short exercises; **Interview corner** boxes answer questions
# that recommender-system interviews like to ask.

# %% [markdown]
# **Running on Colab?** The next cell installs the package from its git repository without
# replacing Colab's own PyTorch build (a constraint pins the installed version, so pip keeps
# it and its CUDA support). Set the repository's URL first, in a cell above it:
# `import os; os.environ["RECFUNNEL_REPO_URL"] = "https://..."`. Locally the cell does
# nothing: install with `make install` and start Jupyter from the virtual environment.

# %%
import os
import subprocess
import sys
import tempfile
from pathlib import Path

if "google.colab" in sys.modules:
    import torch

    REPO_URL = os.environ.get("RECFUNNEL_REPO_URL", "")
    if not REPO_URL:
        raise RuntimeError(
            "Set RECFUNNEL_REPO_URL to the recfunnel git repository before running this cell, "
            'e.g. os.environ["RECFUNNEL_REPO_URL"] = "https://github.com/<owner>/<repo>.git"'
        )
    keep_torch = Path(tempfile.mkdtemp()) / "keep-torch.txt"
    keep_torch.write_text(f"torch=={torch.__version__}\n")  # e.g. 2.x.y+cu121: left alone
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "-c", str(keep_torch)]
        + [f"recfunnel @ git+{REPO_URL}"],
        check=True,
    )

# %% [markdown]
# ## Parameters
#
# - `MODE = "full"` (the default) trains on the real MovieLens-1M with the package's default
#   config: every number is the one `make run` prints for the same seed. The data come from
#   `$RECFUNNEL_DATA_DIR`, or are downloaded from GroupLens (checksum checked). It takes about
#   10 minutes on a 2-core laptop (the funnel is trained twice: step by step, then in one call).
# - Every torch stage runs on a GPU when torch sees one (`config.device = "auto"`, the
#   default; on Colab choose a GPU runtime), else on the CPU.
# - `MODE = "fast"` writes a small synthetic data set in ML-1M's format (600 users, 400
#   movies, with structure planted to be learnt) and trains tiny models: the whole notebook
#   runs in about a minute. Its numbers only show the mechanics; do not read them as results.
#
# Choose the mode with the environment variable `RECFUNNEL_NOTEBOOK_MODE` before starting the
# kernel, or edit the cell.

# %%
import numpy as np
import pandas as pd
import torch
from IPython.display import Image, Markdown, display

from recfunnel.config import load_config
from recfunnel.device import resolve_device
from recfunnel.run import SMOKE_OVERRIDES, PipelineConfig

MODE = os.environ.get("RECFUNNEL_NOTEBOOK_MODE", "full")  # "full" or "fast"
SEED = 0  # the top-level seed: it feeds every trained part (PipelineConfig.seed)
WORK_DIR = Path(tempfile.mkdtemp(prefix="recfunnel-notebook-"))  # runs, plots, the fast data

if MODE == "fast":
    from recfunnel.data.synthetic import write_synthetic_movielens

    DATA_DIR = write_synthetic_movielens(WORK_DIR / "data")
    CACHE_DIR = WORK_DIR / "cache"  # parsed tables; keeps the user's cache clean
    OVERRIDES = list(SMOKE_OVERRIDES)  # tiny models, the same as the test suite's
elif MODE == "full":
    env_dir = os.environ.get("RECFUNNEL_DATA_DIR")
    DATA_DIR = Path(env_dir) if env_dir else None  # None: the package downloads ML-1M
    CACHE_DIR = None  # $RECFUNNEL_CACHE_DIR, else ~/.cache/recfunnel
    OVERRIDES = []  # the defaults, as `make run`
else:
    raise ValueError(f'RECFUNNEL_NOTEBOOK_MODE must be "full" or "fast", got {MODE!r}')

# One config object holds every stage's settings (`recfunnel config` lists them all).
config = load_config(PipelineConfig, overrides=[*OVERRIDES, f"--seed={SEED}"]).seeded()
torch.set_num_threads(config.recall.two_tower.threads)
DEVICE = str(resolve_device(config.device))  # device "auto": a GPU when torch sees one
print(f"MODE = {MODE}, data: {DATA_DIR or 'download'}, work folder: {WORK_DIR}")
print(f"torch stages run on {DEVICE}")
print(f"recall channels {config.recall.channels}, merged by {config.recall.merge}")

# %% [markdown]
# ## 1. The data and its quirks
#
# MovieLens-1M holds 1,000,209 ratings (1 to 5 stars) of 3,706 movies by 6,040 users, who each
# rated at least 20 movies. Following the project's protocol, a rating of 4 or more counts as
# **liked**: that is what the funnel tries to predict. `load_movielens` parses and validates the
# three files (and caches them); `dataset_stats` gives the headline numbers.

# %%
import matplotlib.dates as mdates
import matplotlib.pyplot as plt
from matplotlib.ticker import NullFormatter, ScalarFormatter

from recfunnel.data import dataset_stats, load_movielens

ml = load_movielens(DATA_DIR, cache_dir=CACHE_DIR, progress=False)
stats = dataset_stats(ml)
pd.Series(stats, name="value").to_frame()

# %% [markdown]
# Four things about these data shape every model below:
#
# - **ratings lean positive**: most are 3 to 5 stars, so "liked" is the majority label;
# - **a long tail**: a few blockbusters collect a large share of all ratings, so popularity
#   alone is a strong baseline and a model must work to recommend anything else;
# - **time is uneven**: most ratings arrived in 2000, when users rated dozens of films in their
#   first sessions; 2001 to 2003 is a sparse tail of fewer, returning users. The last 10 % of
#   the ratings (the test part) therefore spans many months;
# - **users differ a lot** in activity: a few rated thousands of movies, most a few dozen.

# %%
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

# %% [markdown]
# ## 2. The temporal split, and why a random split leaks
#
# A deployed recommender learns from the past and serves the future. The protocol's split
# does the same: all ratings sorted by time, the first 80 % are **train**, the next 10 %
# **valid** (for early stopping and choices), the last 10 % **test**. Users whose first
# rating falls after train are **cold**: the models have never seen them, as in real life.

# %%
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


split = make_split(ml.ratings, config.split)
describe(split)

# %% [markdown]
# What if we split at random instead, as many tutorials do? Then train holds ratings made
# *after* the test ratings it is asked to predict: the model learns which movies people went
# on to watch, which films became popular later, and each user's later taste. Nothing like
# that is available when serving, so the numbers come out better than any deployment sees.
#
# Below, the same model (EASE, a strong closed-form item-to-item baseline, fitted in seconds)
# is trained and evaluated twice with the protocol's `Evaluator`: on a seeded random 80/10/10
# split, and on the temporal split. The two rows do not judge the same users (the random
# split spreads test over everyone and has no cold users at all), which is part of the
# point: a random split also hides the cold-start problem.

# %%
from recfunnel.evaluation.baselines import EASE, Popularity
from recfunnel.evaluation.protocol import Evaluator, catalogue

order = np.random.default_rng(SEED).permutation(len(ml.ratings))
cut_train, cut_valid = int(0.8 * len(order)), int(0.9 * len(order))
random_parts = [
    ml.ratings.iloc[np.sort(rows)].reset_index(drop=True)
    for rows in np.split(order, [cut_train, cut_valid])
]
random_split = Split(*random_parts, kind="global")  # the type has no "random" kind

items = catalogue(ml.ratings)  # the catalogue: every rated movie id, ascending
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
display(
    Markdown(
        f"In the random split, {later.mean():.0%} of the train ratings of test users were "
        "made *after* their first test rating: the model has seen the future it is asked to "
        "predict, and its score is inflated accordingly."
    )
)

# %% [markdown]
# ## 3. Baselines first
#
# Before any stage, two baselines that every model must beat, scored the way every list in
# this notebook is scored: **warm test users** (a train rating and a liked test rating), each
# model reading the user's **known history** (train + valid), the known movies removed from
# the candidates, and the list of 20 compared with what the user went on to like.
#
# - **Popularity**: the most liked movies of train, the same list for everyone.
# - **EASE** (Steck, 2019): a linear item-to-item model with a closed form. With `X` the
#   users x items matrix of liked train ratings, `P = (X^T X + lambda I)^-1` and
#   `W[i, j] = -P[i, j] / P[j, j]`, `W[j, j] = 0`; a user's scores are `x_u W`. It is one
#   matrix inverse, and it is very hard to beat on MovieLens.

# %%
test_eval = Evaluator(split, items, ks=(20,), history="known")
test_users = test_eval.users("test", "warm")
baselines = {
    "popularity": Popularity().fit(split.train, items),
    "EASE": EASE().fit(split.train, items),
}
baseline_rows = {
    name: test_eval.list_metrics(test_eval.rank(model, test_users, 20), test_users)
    for name, model in baselines.items()
}
print(f"{len(test_users.user_ids):,} warm test users")
pd.DataFrame(baseline_rows).T[["ndcg@20", "recall@20", "precision@20", "hit_rate@20"]].round(4)

# %% [markdown]
# ## 4. Recall: several channels, merged
#
# *In industry* recall narrows millions of items to a few hundred in milliseconds. No single
# source finds everything, so several **channels** run side by side (an embedding model, an
# item-to-item model, what is trending, ...) and their lists are merged.
#
# Every channel here is a `recfunnel.recall.channel.Channel`: `channel.fit(data)` learns,
# `channel(requests, k=200)` returns the top 200 unseen movies of each request as a
# `Candidates` value (catalogue positions `items`, per-channel `scores`), and
# `channel.score_pairs(requests, pairs)` scores any (request, movie) pair, so that movies
# proposed by another channel get its score too.
#
# Below each default channel is fitted on all of train, as a stand-alone retriever, and
# judged by **recall@K**: the share of the user's future likes that are in its list of K.
# (Inside the funnel, section 5, the same channels learn on the early part of train only.)

# %%
from recfunnel.features import serving_time
from recfunnel.recall.stage import CHANNELS
from recfunnel.stage import FitData
from recfunnel.types import Requests

data = FitData(ml, split, items, progress=False, device=DEVICE, scale=config.scale)
NOW = serving_time(split.train)  # the serving moment: the day after train ends
K_RECALL = config.funnel.topk_recall
RECALL_KS = sorted(k for k in {20, 50, 100, K_RECALL} if k <= K_RECALL)

valid_eval = Evaluator(split, items, ks=RECALL_KS, history="train")
test_eval = Evaluator(split, items, ks=RECALL_KS, history="known")
valid_users, test_users = valid_eval.users("valid", "warm"), test_eval.users("test", "warm")
valid_requests = Requests.after_history(valid_users.user_ids, valid_users.history, NOW)
test_requests = Requests.after_history(test_users.user_ids, test_users.history, NOW)

channels = {}
for name in config.recall.channels:
    channel = CHANNELS[name](getattr(config.recall, name))  # its config section, e.g. recall.ease
    channels[name] = channel.fit(data)


def recall_row(lists, evaluator, users) -> dict[str, float]:
    row = evaluator.list_metrics(lists.items, users)
    return {f"recall@{k}": row[f"recall@{k}"] for k in RECALL_KS if k > 20} | {
        "ndcg@20": row["ndcg@20"]
    }


channel_lists = {name: channel(test_requests, k=K_RECALL) for name, channel in channels.items()}
table = {
    name: {
        **{
            f"valid {k}": v
            for k, v in recall_row(c(valid_requests, k=K_RECALL), valid_eval, valid_users).items()
        },
        **{
            f"test {k}": v
            for k, v in recall_row(channel_lists[name], test_eval, test_users).items()
        },
    }
    for name, c in channels.items()
}
pd.DataFrame(table).T.round(4)

# %% [markdown]
# What each channel is:
#
# - **two_tower**: a neural user tower and item tower whose outputs meet in one dot product
#   (cosine / temperature). The user tower pools the movies the user liked and reads their
#   demographics; the item tower reads the movie id, genres, year and causal popularity.
#   Because the item vectors do not depend on the user, they are computed once and put into
#   an ANN index: a request is one vector and one index search. Its `nn.Module` is below.
# - **ease**: the EASE model of section 3, as a channel.
# - **rp3beta**: a random walk user -> item -> user -> item on the liked graph, each item's
#   arrival probability divided by its popularity to the power beta (Paudel et al., 2017):
#   `W = P_ui P_iu / pop^beta`.
# - **trending**: the movies liked most in the last days, the same for everyone: what a new
#   visitor would see, and a signal of time the others lack.

# %%
print(channels["two_tower"].model_)

# %% [markdown]
# **ANN against exact search.** The two-tower's items live in an index. An exact search
# scores every movie; HNSW (a navigable small-world graph) and IVF (inverted lists over
# k-means clusters) visit a fraction of them. `ann_report` builds each backend and measures
# how many of the exact top 200 each one finds (recall@200 against exact) and how long a
# search of every test user takes. At 3,706 movies exact search is cheap; the index matters
# at a million items (`make bench-ann`).

# %%
from recfunnel.recall.report import ann_report

ann = pd.DataFrame(ann_report(channels["two_tower"], test_eval, k=min(200, len(items) // 2)))
ann[["backend", "params", "build_s", ann.columns[3], "ms_per_query"]].round(4)

# %% [markdown]
# **Merging.** The channels' lists overlap only in part, so a merged list finds more than
# any one of them. Reciprocal-rank fusion (RRF) needs no training: a movie scores
# `sum over channels of 1 / (60 + rank)`. `merge_lists` is the function the recall stage
# calls. Note that merging wins on recall@K, which is what recall is for.

# %%
from recfunnel.recall.merge import merge_lists

merged = merge_lists(channel_lists, K_RECALL, how=config.recall.merge, rrf_k=config.recall.rrf_k)
merge_table = {
    name: recall_row(lists, test_eval, test_users) for name, lists in channel_lists.items()
}
merge_table[f"merged ({config.recall.merge})"] = recall_row(merged, test_eval, test_users)
pd.DataFrame(merge_table).T.round(4)

# %% [markdown]
# > **Interview corner: why is recall a two-tower model and not a cross model?** A cross
# > model (one network over the user *and* the item features together) can be more accurate,
# > but it must run once per (user, item) pair: a million forward passes per request. A
# > two-tower model only meets the two sides in a dot product, so the item side is computed
# > offline and an ANN index finds the best dot products in sub-linear time. Crossing is left
# > to the rank stage, which sees a hundred items, not a million.
# >
# > **What does the logQ correction fix?** With in-batch negatives (`objective=softmax`),
# > popular items appear as negatives far more often than rare ones, so the model learns to
# > push them down. Subtracting the log of each item's sampling probability from its logit
# > (Yi et al., 2019) makes the loss estimate the full softmax again.
#
# > **Try this.** Add the LightGCN or the sequence (SASRec) channel: build
# > `CHANNELS["sequence"](config.recall.sequence).fit(data)`, add its list to
# > `channel_lists`, and see whether the merged recall@200 grows. The README's channel table
# > says what the project measured.

# %% [markdown]
# ## 5. Stacking: what trains on what
#
# Pre-rank and rank read the recall channels' scores as features. If a channel had been
# trained on the very likes those stages learn from, its scores there would be too good (it
# has memorised them), and the later stages would learn to trust a signal that is weaker
# when serving. So train is cut in time (`recfunnel.training.stacking`):
#
# ```
# train ratings, by time:  [ ---------- early (80 %) ---------- | -- slice (20 %) -- ]
#                            recall + item-to-item learn here     pre-rank and rank learn here
#
#   early ratings ──fit──> recall channels, item-to-item (EASE) score
#   slice users' requests ──replay──> those models ──> candidates + scores (out of sample)
#                          └─ labelled with what each user did next ─> pre-rank, rank examples
#   all of train ──refit──> EASE, RP3beta, trending, item-to-item for serving
#                           (the two-tower is kept: pre-rank reads its vectors)
#   pre-rank ──cross-fitted over user folds──> out-of-fold logits ──> a rank feature
#   valid ──> early stopping, the like head's calibration, the re-rank lambda
# ```
#
# - For each user who comes back to rate in the slice after a pause, a request is
#   **replayed**: their history is everything before the return, "now" is the moment they
#   return, and what they rated from then on is the target. That is what a test user looks
#   like: a known history, a pause, then a future.
# - Other slice users lend their rated pairs to the rank model's like head.
#
# The cells below are the recipe's steps, with the same functions `train_funnel` calls.

# %%
from recfunnel.funnel import Funnel
from recfunnel.item_to_item import ItemToItem
from recfunnel.prerank import PreRankStage
from recfunnel.rank import RankStage
from recfunnel.recall import RecallStage
from recfunnel.rerank import MMRReranker
from recfunnel.stage import Stacked
from recfunnel.training.stacking import add_like_pairs, build_examples, slice_requests, time_slice
from recfunnel.types import Candidates, Embeddings

stacking = config.stacking
rng = np.random.default_rng(config.prerank.seed)  # draws the examples' negatives

# Step 1: recall and item-to-item on the early part of train.
recall_split, late = time_slice(split, stacking.slice_fraction)
early = data.with_split(recall_split)
recall = RecallStage(config.recall, index=config.index.build(len(data.item_ids))).fit(early)
item_to_item = ItemToItem(config.item_to_item).fit(early)

# Step 2: replay the slice users' requests through the early models; label the candidates.
replay = slice_requests(recall_split.train, late, items, stacking)
slice_lists = recall(replay.requests, Candidates.empty(len(replay.requests)), k=K_RECALL)
emb = slice_lists.embeddings  # item vectors as of the slice start (step 3 moves them)
slice_lists = Candidates(
    slice_lists.items,
    slice_lists.scores,
    slice_lists.channels,
    Embeddings(emb.users, emb.items.copy()),
)
requests = replay.requests
examples = build_examples(
    slice_lists,
    replay.targets,
    lambda pairs: recall.score_pairs(requests, pairs),
    unrated_negatives=stacking.unrated_negatives,
    rated_pairs=stacking.rated_pairs,
    rng=rng,
)
n_replayed = len(requests)
if stacking.like_pairs:
    replay, examples = add_like_pairs(
        replay, examples, recall.score_pairs, recall_split.train, late, items, stacking
    )
stacked = Stacked(replay.requests, item_to_item.score_pairs(replay.requests, examples))

display(
    Markdown(
        f"The slice starts on {pd.to_datetime(late['timestamp'].min(), unit='s').date()} and "
        f"holds {len(late):,} train ratings. {n_replayed:,} returning users' requests were "
        f"replayed and {len(replay.requests) - n_replayed:,} other slice users lent their "
        f"rated pairs: {len(examples):,} labelled (request, movie) pairs, "
        f"{int(np.asarray(examples.labels).sum()):,} of them liked, "
        f"{int(np.asarray(examples.candidate).sum()):,} proposed by recall."
    )
)
shown = ["recall", "recall.ease", "recall.ease.rrf", "recall.trending.rrf", "item_to_item"]
head = {name: stacked.pairs.scores[name][:5] for name in shown if name in stacked.pairs.scores}
pd.DataFrame({**head, "liked": np.asarray(stacked.pairs.labels)[:5]}).round(3)

# %% [markdown]
# Each row above is one training pair and its columns are the features the later stages read:
# every channel's score (`recall.<channel>`), the reciprocal rank at which it proposed the
# movie (`.rrf`, 0 when it did not) and the item-to-item score, all out of sample.
#
# **More requests from an earlier cut.** ~500 requests are few for a deep ranker, and the
# slice cannot simply grow: a larger slice leaves recall less to learn from. So the same
# two steps run again as if train had ended earlier (`stacking.cuts = 2`, the default):
# recall and item-to-item are fitted on the ratings before a second cut, one slice earlier,
# and that slice's returning users are replayed through them. Those models are dropped
# afterwards; their examples go to the rank stage only. Pre-rank keeps to the latest slice,
# because it reads the recall vectors, and every recall fit has vectors of its own.
# `earlier_cuts` packages steps 1 and 2 (`replay_cut`) for each earlier cut.

# %%
from recfunnel.training.recipe import earlier_cuts

cuts = earlier_cuts(data, recall_split, config)
for i, cut in enumerate(cuts, start=1):
    start_day = pd.to_datetime(cut.counts["slice_start"], unit="s").date()
    print(
        f"cut {i}: slice from {start_day}, {cut.counts['requests']:,} replayed requests "
        f"(+{cut.counts['like_pair_requests']:,} for the like head), "
        f"{cut.counts['examples']:,} examples"
    )
earlier = [cut.stacked for cut in cuts]  # keep the examples; the cut's models are done
del cuts

# %% [markdown]
# Step 3 moves the channels to serving: those whose scores keep their meaning are refitted on
# all of train, and every channel's serving state (popularity, the ANN index) moves to the
# end of train. Then the funnel object is assembled: a plain dict of components in chain
# order. `funnel.run(requests)` chains them; nothing else ever does.

# %%
if stacking.refit:
    refitted = recall.refit(data)
    item_to_item = ItemToItem(config.item_to_item).fit(data)
    print("refitted on all of train:", refitted)
recall.refresh(split.train)
funnel = Funnel(
    {
        "recall": recall,
        "item_to_item": item_to_item,
        "prerank": PreRankStage(config.prerank),
        "rank": RankStage(config.rank),
        "rerank": MMRReranker(config.rerank).fit(data),
    },
    config.funnel,
    items,
    now=NOW,
)
print(list(funnel.stages))

# %% [markdown]
# > **Interview corner: why does stacking leak, and what fixes it?** A model's scores on its
# > own training data are better than on new data. A second-stage model trained on those
# > scores learns "the recall score is nearly always right", and at serving, on fresh
# > requests, it is not. The fix is that every score a later stage learns from is *out of
# > sample*: produced by a model that did not see that pair. Here that is done in time (the
# > slice) and, for the pre-rank logit that rank reads, by cross-fitting over user folds.

# %% [markdown]
# ## 6. Pre-rank: a cheap cut
#
# *In industry* the ranker cannot afford every recall candidate, so a light model cuts the
# list to what the ranker's latency budget allows. Its job is not to order well but to
# **keep the hits**.
#
# *Here* a small MLP reads only what recall already computed (the user and item vectors,
# their product, the channel scores and ranks) plus the item-to-item score, is trained with
# binary cross-entropy on the candidate pairs (liked or not), and keeps the best 100. It
# early-stops on its valid metric: the funnel's own list on valid, the stages before it fixed.

# %%
from recfunnel.evaluation.bootstrap import per_user_metric
from recfunnel.evaluation.protocol import metric_cutoff
from recfunnel.training.recipe import cross_fit_prerank

valid_eval_users = Evaluator(split, items).users("valid", "warm")
valid_funnel_requests = funnel.requests(valid_eval_users)
ks = {
    20,
    config.prerank.keep,
    K_RECALL,
    metric_cutoff(config.prerank.valid_metric, "prerank.valid_metric"),
    metric_cutoff(config.prerank.prior_metric, "prerank.prior_metric"),
    metric_cutoff(config.rank.valid_metric, "rank.valid_metric"),
}
evaluator = Evaluator(split, items, ks=sorted(ks))
# The fusion's channel weights, now that the channels are the serving ones: 1 each unless
# valid's users clearly prefer another weight for a channel (recall.rrf_weights = none).
if config.recall.rrf_weights is None and config.recall.merge == "rrf" and len(recall.channels) > 1:
    fusion = recall.choose_weights(valid_funnel_requests, valid_eval_users.truth, k=K_RECALL)
    print("fusion weights chosen on valid:", fusion["weights"])
valid_lists = funnel.run(valid_funnel_requests, upto="item_to_item")


def valid_metric(stage_name: str, metric: str, per_user: bool = False):
    """`metric` of the valid users' list after `stage_name`, the stages before it fixed:
    the mean, or with `per_user` each user's value."""
    before = list(funnel.stages)[list(funnel.stages).index(stage_name) - 1]

    def validate(stage):
        out = funnel.run(
            valid_funnel_requests, upto=stage_name, resume=(before, valid_lists[before])
        )
        if per_user:
            return per_user_metric(out[stage_name].items, valid_eval_users, metric)
        return evaluator.list_metrics(out[stage_name].items, valid_eval_users)[metric]

    return validate


# `choose`: after training, the kept list is blended with recall's order (`recfunnel.blend`),
# the weight chosen on valid by the kept list's NDCG@20 (`prerank.prior_metric`), one number
# per valid user: recall's order stays unless a weight beats it by 3 standard errors of the
# paired per-user difference, so the MLP's order has to earn its place.
funnel["prerank"].fit(
    data,
    stacked.subset(examples.candidate),
    valid_metric("prerank", config.prerank.valid_metric),
    choose=valid_metric("prerank", config.prerank.prior_metric, per_user=True),
)
print(funnel["prerank"].model_)
print("blend weight chosen on valid:", funnel["prerank"].prior_choice_)
print("inputs:", funnel["prerank"].scalars)

# %% [markdown]
# The rank stage will read the pre-rank logit as a feature too, so it must be out of sample
# as well: `cross_fit_prerank` splits the replayed requests into folds and scores each fold
# with a pre-rank model trained on the others.

# %%
oof = cross_fit_prerank(
    config.prerank,
    stacked,
    folds=stacking.folds,
    epochs=max(funnel["prerank"].log_.best_epoch, 1),
    seed=config.prerank.seed,
    device=DEVICE,
)
print(f"{len(oof):,} out-of-fold pre-rank logits over {stacking.folds} folds")

# %% [markdown]
# ## 7. Rank: the expensive model that orders the list
#
# *In industry* this is the CTR model: every feature of the user, the item and the context,
# crossed together. It sees only the survivors of pre-rank, so it can be large.
#
# *Here* it is **DIN + DCN-v2**: DIN (Zhou et al., 2018) attends over the user's recent
# movies with weights that depend on the candidate; DCN-v2 (Wang et al., 2021) learns
# explicit feature crosses, here in its low-rank form W = U V^T of rank 32
# (`rank.cross_rank`: fewer parameters for ~170,000 training pairs, chosen on valid over full
# rank, 64 and 16); the channel scores and the cross-fitted pre-rank logit come in as
# dense features. `--rank.interest=dien` swaps DIN for DIEN (a GRU over the history, then an
# attention-gated GRU). It has two heads, ESMM-style: P(rated | candidate) on every example
# and P(liked | rated) on the rated ones, and ranks by their product.
#
# Among its dense inputs are the **stars a rating model predicts** (`rank.use_rating`): the
# item-to-item component fits a biased matrix factorisation of every train rating by ALS and
# solves each request's user from that request's history, so the like head sees *this*
# user's taste for *this* movie, not only the two like rates. The two heads want different
# amounts of training: the like head over-fits after an epoch or two while the list still
# gains, so the like head **stops on its own** (`rank.like_stopping`): after the first epoch
# whose LogLoss on valid's rated pairs is no better than before, only the watch head trains.
#
# Its list is sorted by its score **blended with the order pre-rank handed it**
# (`rank.prior_weight = 1`): score / spread - log(1 + position), the spread measured on the
# training candidates. A model learned from ~500 requests is noisy; recall's fusion needs no
# training at all. On the backtest, a holdout built like test, the model's own order lost to
# that fusion and the blend beat both, so the blend is the default there, although the
# 27-day valid part prefers the model alone (the README's "Rank, blended with the order it
# is handed").

# %%
from recfunnel.evaluation.protocol import rated_pairs
from recfunnel.training.recipe import with_earlier_cuts

valid_lists.update(
    funnel.run(
        valid_funnel_requests, upto="prerank", resume=("item_to_item", valid_lists["item_to_item"])
    )
)
rank_stacked = Stacked(stacked.requests, stacked.pairs.with_scores("prerank", oof))
# The earlier cuts' examples join, each with pre-rank logits cross-fitted on its own cut.
rank_stacked = with_earlier_cuts(
    rank_stacked,
    earlier,
    config.prerank,
    folds=stacking.folds,
    epochs=max(funnel["prerank"].log_.best_epoch, 1),
    device=DEVICE,
)
# Valid's rated pairs are the like head's own holdout: after every epoch its LogLoss there
# decides whether the like head keeps learning (rank.like_stopping), and at the end they
# calibrate it (a scale and a shift of its logit).
pairs = rated_pairs(split.valid, valid_eval_users.user_ids, items)
scored = funnel.score_pairs(valid_funnel_requests, pairs, upto="prerank")
funnel["rank"].fit(
    data,
    rank_stacked,
    valid_metric("rank", config.rank.valid_metric),
    like_holdout=(valid_funnel_requests, scored),
)
choices = {}
# The blend weight may rise (2, 4, inf: pre-rank's order) where valid's users clearly say the
# model's own order hurts the list it was handed; never fall (rank.prior_raise).
choices["rank.prior_weight"] = funnel["rank"].raise_prior(
    valid_metric("rank", config.rank.valid_metric, per_user=True)
)
if config.rank.calibrate:
    # The like head's logit -> logit / T + b (Platt), on valid's rated pairs (lowest LogLoss).
    choices["rank.calibration"] = funnel["rank"].calibrate(valid_funnel_requests, scored)
print(funnel["rank"].model_)
for epoch in funnel["rank"].log_.epochs:
    print(
        f"epoch {epoch['epoch']}: valid {config.rank.valid_metric} "
        f"{epoch[config.rank.valid_metric]:.4f}, like head's valid LogLoss "
        f"{epoch.get('like_logloss', float('nan')):.4f}"
    )
print("the like head stopped learning after epoch", funnel["rank"].like_stopped_after_)
print(f"rank's score spread on its training candidates: {funnel['rank'].logit_scale_:.3f}")
print("blend weight:", funnel["rank"].prior_weight_, choices["rank.prior_weight"])
print("calibration:", choices.get("rank.calibration"))

# %% [markdown]
# > **Interview corner: what do ESMM's two heads solve?** The like label exists only for
# > movies the user rated, yet the model must score every candidate, rated or not. Training
# > P(liked) on rated pairs alone learns on a biased sample (*sample selection bias*); the
# > rated pairs are also few (*data sparsity*). ESMM (Ma et al., 2018) learns
# > P(rated) on all pairs and P(liked | rated) on the rated ones, with shared embeddings, and
# > ranks by P(rated and liked) = their product, a quantity defined on the whole space.
#
# > **Try this.** Retrain only this stage with DIEN, the other stages untouched:
# > `funnel.stages["rank"] = RankStage(dataclasses.replace(config.rank, interest="dien"))`,
# > then rerun the fit cell above and the evaluation cells below.

# %% [markdown]
# ## 8. Re-rank: the page the user sees
#
# *In industry* the last stage turns a ranked list into a page: diversity, freshness,
# business rules. Twenty near-identical sequels are accurate and useless.
#
# *Here* the default, the **ILD greedy**, builds the list one place at a time: place t + 1
# gets the movie maximising
#
#     lambda * relevance / log2(t + 2) + (1 - lambda) * mean dissimilarity to those picked
#
# (relevance: the ranker's score scaled to [0, 1] per user; dissimilarity: 1 - cosine of
# genre vectors). The first term is NDCG's discounted gain of that place, the second what
# the movie adds to the list's ILD, the two numbers the list is judged by. **MMR** (Maximal
# Marginal Relevance, `rerank.method=mmr`) maximises `lambda * relevance - (1 - lambda) *
# max similarity to the movies already picked`. **DPP** (`rerank.method=dpp`, the fast
# greedy MAP of Chen et al., 2018) picks the set whose kernel `quality x similarity x
# quality` has the largest determinant. Whichever picks them, the chosen 20 are then
# **listed by relevance** (`rerank.order`): ILD@20 is a property of the set, whatever its
# order, while NDCG@20 rewards the most relevant at the top, so the sort costs no
# diversity and wins back accuracy. lambda is not chosen by hand:
# `choose_operating_point` sweeps it on valid and keeps the most varied list within 2 % of
# the rank order's NDCG@20. Test is never looked at.

# %%
from recfunnel.training.recipe import choose_operating_point

if config.rerank.lambda_mmr is None:
    choices["rerank.lambda_mmr"] = choose_operating_point(funnel, data)
    print({k: v for k, v in choices["rerank.lambda_mmr"].items()})
print("lambda:", funnel["rerank"].config.lambda_mmr)

# %% [markdown]
# **How many candidates should rank score?** Rank and the re-ranker cost about in
# proportion to pre-rank's `keep`. Rank learned from recall's candidates, so its weights do
# not depend on `keep`, and one trained funnel can be read at several keeps. On valid, at
# the lambda just chosen:

# %%
valid_ild = Evaluator(
    split, items, ks=(20,), history="train", item_features=ml.genre_matrix(items), ild_ks=(20,)
)
by_keep = {}
for keep in sorted({config.prerank.keep // 2, config.prerank.keep, K_RECALL}):
    out = funnel.run(
        valid_funnel_requests, resume=("item_to_item", valid_lists["item_to_item"]), keep=keep
    )
    rank_row = valid_ild.list_metrics(out["rank"].items, valid_eval_users)
    final_row = valid_ild.list_metrics(out["rerank"].items, valid_eval_users)
    by_keep[keep] = {
        "rank ndcg@20": rank_row["ndcg@20"],
        "final ndcg@20": final_row["ndcg@20"],
        "final ild@20": final_row["ild@20"],
    }
pd.DataFrame(by_keep).T.rename_axis("keep").round(4)

# %% [markdown]
# On ML-1M, rank's own list hardly moves between 50 and 200 candidates: what it promotes
# into the top 20 comes from the first 50. What `keep` changes is the re-ranker's pool, and
# so the diversity it can reach. The default stays at 100; `--prerank.keep=50` saves about
# 13-15 % of a served request. `bench/prerank_keep.py` measures both on the holdouts and on
# the clock (the README's "Benchmark").

# %% [markdown]
# The funnel is complete. One user through it, stage by stage: `funnel.run` returns every
# component's `Candidates`, and each list is shorter than the one before.

# %%
lists = funnel.run(funnel.requests(test_eval.users("test", "warm"))[:3])
for stage, cands in lists.items():
    print(
        f"{stage:>12}: {cands.items.shape[1]:>3} candidates, scores {sorted(cands.scores)[:4]}..."
    )

# %% [markdown]
# ## 9. The whole funnel on the future, with intervals
#
# `evaluate_funnel` is what `recfunnel evaluate` runs: every warm test user through the
# chain, each stage's output list scored *as if it were the final recommendation*, the
# baselines (popularity, EASE, each channel alone, and the training-free RRF fusion) on the
# same users, paired bootstrap 95 % intervals over users (1,000 seeded draws), the rated
# pairs' AUC / GAUC / LogLoss / ECE, and the lambda sweeps of every re-rank method.

# %%
from recfunnel.evaluation.funnel import evaluate_funnel
from recfunnel.evaluation.report import write_plots

genres = ml.genre_matrix(items)
report = evaluate_funnel(funnel, split, genres, part="test")
stages = report["stages"]
columns = ["candidates", "ndcg@20", "recall@20", "ild@20", "retention", "latency_ms_per_user"]
rows = {**stages, **{f"baseline: {n}": r for n, r in report["baselines"].items()}}
display(pd.DataFrame.from_dict(rows, orient="index").reindex(columns=columns).round(4))

intervals = report["intervals"]["differences"]
pd.DataFrame(
    {
        name: {
            "NDCG@20 difference": d["ndcg@20"]["mean"],
            "95 % low": d["ndcg@20"]["low"],
            "95 % high": d["ndcg@20"]["high"],
        }
        for name, d in intervals.items()
    }
).T.round(4)

# %% [markdown]
# Read the differences before the table: an interval that contains 0 means the data cannot
# tell the two lists apart. On ML-1M (full mode) the README's numbers apply: recall's fused
# top 20 beats EASE, and the later stages do not add to it on test.
#
# The rank model's like head, pointwise, on every rated test pair:

# %%
pointwise = pd.DataFrame(report["pointwise"]).T
pointwise[[c for c in ("auc", "gauc", "logloss", "ece") if c in pointwise]].round(4)

# %%
plots = write_plots(report, WORK_DIR / "plots")
for path in plots:
    if path.name in ("funnel.png", "lambda_sweep.png"):
        display(Image(filename=str(path)))

# %% [markdown]
# > **Interview corner: why does re-ranking cost accuracy?** The rank order is, by
# > construction, the model's best guess of relevance; any re-ordering for variety moves a
# > less likely movie up. Every re-ranker pays in NDCG for ILD. The question is the exchange
# > rate, which the sweep above shows: near lambda = 1 a little variety is cheap, further
# > out it is expensive.
#
# **Change one field, rerun one stage.** The re-ranker holds no weights, so swapping the ILD
# greedy for MMR or DPP is a new component fed the rank stage's lists; nothing before it is
# retrained (`funnel.run(requests, resume=("rank", lists))` does the same inside the chain).
# All use the lambda chosen for the ILD greedy here; the others' own operating points would
# come from their own sweeps.

# %%
import dataclasses

test_funnel_requests = funnel.requests(test_eval.users("test", "warm"))
ranked = funnel.run(test_funnel_requests, upto="rank")
ild_eval = Evaluator(split, items, ks=(20,), history="known", item_features=genres, ild_ks=(20,))
compare = {}
for method in ("ild", "mmr", "dpp"):
    rerank = MMRReranker(dataclasses.replace(funnel["rerank"].config, method=method)).fit(data)
    final = rerank(test_funnel_requests, ranked["rank"], k=config.funnel.topk_final)
    row = ild_eval.list_metrics(final.items, test_eval.users("test", "warm"))
    compare[f"{method}, lambda {rerank.config.lambda_mmr}"] = {
        k: row[k] for k in ("ndcg@20", "ild@20")
    }
pd.DataFrame(compare).T.round(4)

# %% [markdown]
# ## 10. One user through the funnel
#
# `write_run` saves the funnel as a run directory (config, manifest with checksums, each
# component's weights as JSON / NPY / state dicts); `Pipeline.load` opens one for serving,
# and `recommend_for_user` answers one user with every stage's score and position. We pick
# a warm test user deterministically: the smallest id among the evaluated users.

# %%
from recfunnel.run import write_run
from recfunnel.serving.recommender import Pipeline
from recfunnel.training.recipe import TrainReport

trained_on = {"device": DEVICE, "processes": 1}
STEP_RUN = write_run(
    WORK_DIR / "step-by-step",
    config,
    ml,
    funnel,
    TrainReport(choices=choices, trained_on=trained_on),
)
pipe = Pipeline.load(STEP_RUN, ml)
uid = int(test_eval.users("test", "warm").user_ids.min())

movies = ml.items.set_index("item_id")
known = split.known_history("test")
future_likes = set(
    split.test.loc[(split.test["user_id"] == uid) & (split.test["rating"] >= 4), "item_id"]
)


def title(movie_id: int) -> str:
    year = movies.at[movie_id, "year"]
    name = movies.at[movie_id, "title"]
    return name if pd.isna(year) else f"{name} ({year})"


mine = known[(known["user_id"] == uid) & (known["rating"] >= 4)].sort_values("timestamp")
print(f"user {uid}: {len(mine)} liked movies known, {len(future_likes)} liked in test; last liked:")
pd.DataFrame(
    {"title": [title(m) for m in mine["item_id"]], "stars": mine["rating"].to_numpy()}
).tail(5)

# %% [markdown]
# Each stage's top 10 for this user (a star marks a movie the user went on to like in
# test), and which of recall's candidates each later stage dropped:

# %%
user_lists = pipe.recommend_batch([uid])


def top_titles(positions: np.ndarray, n: int = 10) -> pd.Series:
    ids = pipe.funnel.item_ids[positions[positions >= 0][:n]]
    marked = [("* " if m in future_likes else "") + title(m) for m in ids]
    return pd.Series(marked, index=range(1, len(marked) + 1))


display(
    pd.DataFrame(
        {
            stage: top_titles(c.items[0])
            for stage, c in user_lists.items()
            if stage != "item_to_item"
        }
    )
)
kept = {stage: set(c.items[0][c.items[0] >= 0]) for stage, c in user_lists.items()}
dropped = {
    "pre-rank dropped": kept["recall"] - kept["prerank"],
    "re-rank left out": kept["rank"] - kept["rerank"],
}
for what, positions in dropped.items():
    liked = [title(m) for m in pipe.funnel.item_ids[sorted(positions)] if m in future_likes]
    print(f"{what}: {len(positions)} movies, of which liked in test: {liked[:5] or 'none'}")

# %% [markdown]
# `recommend_for_user(user_id, topk_recall=200, topk_final=20, lambda_mmr=...)` gives the
# final list with titles, genres and every stage's score and position; `path` says how the
# user was served (`funnel`, `cold` for a user with no history, `popularity` for an unknown
# id).

# %%
rec = pipe.recommend_for_user(uid)
print(f"path: {rec.path}, ILD: {rec.ild:.4f}, list sizes: {rec.candidates}")
pd.DataFrame(
    [
        {
            "rank": i.rank,
            "title": i.title,
            "genres": i.genres,
            "liked in test": i.movie_id in future_likes,
        }
        | {f"{s} pos": p for s, p in i.positions.items()}
        for i in rec.items
    ]
).set_index("rank").head(10)

# %%
unknown = pipe.recommend_for_user(10**9, topk_final=5)
print(f"user {unknown.user_id}: path {unknown.path!r}: {[i.title for i in unknown.items]}")

# %% [markdown]
# ## 11. The same funnel in one call, and from the command line
#
# Everything from section 5 on is `train_funnel(ml, split, config)`. `recfunnel train`
# calls it and `write_run`; `recfunnel evaluate RUN_DIR` calls `evaluate_funnel`. Training is
# deterministic for a given seed on one machine, so the three must agree to the last digit.

# %%
import contextlib
import io
import json

from recfunnel.cli import main as recfunnel_cli
from recfunnel.training.recipe import train_funnel

one_call, train_report = train_funnel(ml, split, config, progress=False)
ONE_RUN = write_run(WORK_DIR / "one-call", config, ml, one_call, train_report)

data_args = ["--data-dir", str(DATA_DIR)] if DATA_DIR is not None else []
data_args += ["--cache-dir", str(CACHE_DIR)] if CACHE_DIR is not None else []
with contextlib.redirect_stdout(io.StringIO()) as printed:  # the report, also in report.md
    status = recfunnel_cli(["evaluate", str(ONE_RUN), "--no-progress", *data_args])
assert status == 0, "recfunnel evaluate failed: see the message above"
print("\n".join(printed.getvalue().splitlines()[:3]), "...")

cli_report = json.loads((ONE_RUN / "report.json").read_text())
agree = pd.DataFrame(
    {
        "step by step": {s: stages[s]["ndcg@20"] for s in stages},
        "train_funnel + recfunnel evaluate": {
            s: cli_report["stages"][s]["ndcg@20"] for s in stages
        },
    }
)
display(agree.round(6))
assert np.allclose(agree.iloc[:, 0], agree.iloc[:, 1], rtol=0, atol=1e-9), "the two funnels differ"
print("identical: the step-by-step funnel is train_funnel's")

# %% [markdown]
# ## Where to go next
#
# - `recfunnel config` lists every setting with its default; change one on the command line,
#   e.g. `recfunnel train --rank.interest=dien --rerank.method=dpp`, and compare two runs with
#   `recfunnel compare RUN_A RUN_B` (paired intervals).
# - `make seeds` trains three seeds and summarises them: how much of a difference is noise.
# - `recfunnel serve RUN_DIR` opens a page that shows this funnel live, for any user.
# - The docs (`mkdocs serve`, sources in `docs/`) give one page per stage and a worked
#   example of adding a channel.
#
# > **Try this.** Choose on a holdout that resembles test: train with `--split=backtest`
# > (section "Choosing without test" of the README) and see whether the stage ordering
# > agrees with test's.
