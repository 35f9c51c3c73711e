"""Fixed column names and constants of the MovieLens tables, set once at load time.

ratings: user_id (int32), item_id (int32), rating (int8, 1..5 for ML-1M; float32 half stars
         0.5..5.0 for ML-10M and later), timestamp (int64, unix s)
users:   user_id (int32), gender ("M"/"F"), age (int8, ML-1M age bucket), occupation (int8, 0..20),
         zip (str); the releases without users.dat list every rating user with all four
         demographics <NA> (see `data.formats.users_from_ratings`)
items:   item_id (int32), title (str, without the year), year (Int16, nullable), genres (str,
         "|"-joined genre names, in the order of GENRES)
tags:    user_id (int32), item_id (int32), tag (str), timestamp (int64); only ML-10M and later
"""

USER, ITEM, RATING, TIME = "user_id", "item_id", "rating", "timestamp"
RATING_COLUMNS = (USER, ITEM, RATING, TIME)
USER_COLUMNS = (USER, "gender", "age", "occupation", "zip")
ITEM_COLUMNS = (ITEM, "title", "year", "genres")
TAG_COLUMNS = (USER, ITEM, "tag", TIME)

# A rating of 4 or 5 counts as "liked" (label 1) everywhere in the project (protocol.md).
LIKE_THRESHOLD = 4

# The 18 genres of ML-1M's README, in its order; the genre multi-hot vectors use this order.
GENRES = (
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)

# ML-1M's age buckets (README): 1 = "Under 18", 18 = "18-24", ..., 56 = "56+".
AGE_BUCKETS = (1, 18, 25, 35, 45, 50, 56)
N_OCCUPATIONS = 21
