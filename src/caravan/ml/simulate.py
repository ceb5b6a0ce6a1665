"""A SIMULATED recommendation click log: realistic in shape, deterministic, with a learnable signal.

This is the embedded demo's data source; nothing in it is real. Every table carries the schema
metadata ``caravan.simulated = true`` so it cannot be mistaken for production data.

The world behind the log, fixed by ``seed`` (the same on every day):

- a catalogue of 2,000 items, each in one latent category (electronics, books, kitchen, ...). The
  category is never a column: it shows only in the item's title words (and, by memorising, its id).
  Categories differ in appeal; titles start with a made-up brand whose reputation, like a few other
  title words (``bestseller``, ``refurbished``...), moves the click rate too. Prices depend on the
  category; popularity is heavy-tailed and partly reflects the item's latent quality.
- about ``rows / 20`` users with heavy-tailed (Zipf-like) activity, a latent preference over the
  categories and a price sensitivity.

Each day (a different random stream per date) a recommender shows items to users, partly from
their preferred categories, at ranks 1..20. The click probability is an examination probability
that falls with the rank (position bias) times a relevance that grows with the user's preference
for the item's category, the category's appeal, the item's quality and title words, and falls
with the price for price-sensitive users.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["SIMULATED_SCHEMA", "simulate_click_log"]

SIMULATED_SCHEMA: pa.Schema = pa.schema(
    [
        pa.field("event_id", pa.string()),
        pa.field("event_time", pa.timestamp("us", tz="UTC")),
        pa.field("user_id", pa.int64()),
        pa.field("item_id", pa.int64()),
        pa.field("item_title", pa.string()),
        pa.field("item_price", pa.float64()),
        pa.field("item_popularity", pa.float64()),
        pa.field("user_activity", pa.float64()),
        pa.field("position", pa.int32()),
        pa.field("clicked", pa.int8()),
    ],
    metadata={b"caravan.simulated": b"true"},
)
"""The simulated click log's columns, in order, with the ``caravan.simulated`` marker."""

N_ITEMS = 2000
EVENTS_PER_USER = 20
MAX_POSITION = 20
_ITEM_ID_BASE = 100_000
_USER_ID_BASE = 1_000_000
#: User ids are scattered by an odd multiplier modulo 2**23 (a bijection for up to 8.4 million users) and stay
#: below 2**24, so they survive a cast to float32 exactly (feature matrices are float32).
_USER_ID_MULTIPLIER, _USER_ID_MODULUS = 2_654_435_761 % (1 << 23), 1 << 23
# Distinct streams of the seed sequence, so catalogue, users and daily events never share draws.
_STREAM_CATALOGUE, _STREAM_USERS, _STREAM_EVENTS = 0xCA7A, 0x05E2, 0xE7E7

#: Latent categories: title words, median price and share of the catalogue.
_CATEGORIES: dict[str, tuple[tuple[str, ...], float, float]] = {
    "electronics": (("wireless", "bluetooth", "charger", "headphones", "speaker", "usb", "hdmi", "cable",
                     "smart", "battery", "laptop", "keyboard", "mouse", "monitor", "earbuds", "adapter"), 45.0, 0.16),
    "books": (("novel", "paperback", "hardcover", "mystery", "fantasy", "biography", "cookbook", "poetry",
               "anthology", "thriller", "illustrated", "memoir", "guide", "volume", "stories", "saga"), 14.0, 0.15),
    "kitchen": (("stainless", "skillet", "knife", "cookware", "blender", "kettle", "nonstick", "cutting",
                 "mug", "espresso", "utensil", "spatula", "baking", "pan", "teapot", "grinder"), 30.0, 0.13),
    "garden": (("planter", "seeds", "hose", "pruning", "shears", "compost", "lawn", "trowel", "greenhouse",
                "watering", "flower", "herb", "soil", "mulch", "rake", "trellis"), 22.0, 0.09),
    "sports": (("yoga", "running", "dumbbell", "fitness", "tennis", "cycling", "helmet", "resistance",
                "football", "basketball", "gloves", "mat", "treadmill", "jersey", "sneakers", "bands"), 35.0, 0.13),
    "toys": (("puzzle", "bricks", "plush", "doll", "dinosaur", "building", "blocks", "kids", "robot",
              "crayons", "playset", "toddler", "slime", "marbles", "kite", "teddy"), 18.0, 0.11),
    "fashion": (("cotton", "jacket", "dress", "leather", "wallet", "scarf", "denim", "jeans", "sweater",
                 "hoodie", "sunglasses", "handbag", "linen", "wool", "boots", "shirt"), 40.0, 0.13),
    "beauty": (("moisturizer", "serum", "shampoo", "lipstick", "fragrance", "perfume", "lotion",
                "conditioner", "mascara", "sunscreen", "cleanser", "nail", "polish", "eyeliner", "balm",
                "toner"), 16.0, 0.10),
}
#: Made-up brands per category (a title starts with its brand); brands differ in reputation.
_BRANDS: dict[str, tuple[str, ...]] = {
    "electronics": ("voltix", "sonara", "ampero"), "books": ("pagecraft", "inkwell", "foliant"),
    "kitchen": ("chefline", "copperleaf", "kitchara"), "garden": ("greenthumb", "verdana", "bloomfield"),
    "sports": ("stridex", "peakform", "athlon"), "toys": ("playnest", "tinkerly", "wondertoy"),
    "fashion": ("urbanthread", "velora", "norrland"), "beauty": ("lumiere", "puressence", "glowlab"),
}
#: Neutral descriptive words any title may use.
_GENERIC = ("premium", "classic", "new", "deluxe", "set", "pack", "large", "small", "black", "white", "blue",
            "red", "green", "grey", "mini", "pro", "ultra", "portable", "lightweight", "durable", "compact",
            "vintage", "modern", "eco", "original", "essential", "travel", "home", "gift", "value", "xl", "plus",
            "max", "series", "collection", "limited", "edition", "natural", "soft", "heavy", "duty", "2024")
#: Title words that move the click rate by themselves (logit shift), whatever the category.
_SIGNAL_WORDS = {"bestseller": 1.0, "trending": 0.7, "official": 0.4, "refurbished": -1.0, "used": -0.8,
                 "generic": -0.5}
#: Share of titles with one of the signal words.
_SIGNAL_SHARE = 0.5
#: Click model (logit scale): intercept, weight of sqrt(user preference for the category), category appeal range.
_BASE_LOGIT, _PREFERENCE_WEIGHT, _APPEAL = -0.6, 1.2, 2.0
_PRICE_SIGMA = 0.7
_BRAND_SPREAD = 1.0
#: Relative traffic per hour of the day (UTC): quiet nights, an evening peak.
_HOURLY = np.array([2, 1.5, 1, 1, 1, 1.5, 3, 5, 6, 6, 6, 6.5, 7, 6.5, 6, 6, 6.5, 7.5, 9, 10, 10, 8, 6, 4])


def _entropy(seed: int) -> int:
    """A non-negative int for numpy's SeedSequence (negative seeds are allowed and stay distinct)."""
    return seed % (1 << 64)


class _Catalogue:
    """The items: category, title, price, popularity and latent quality (fixed by the seed)."""

    def __init__(self, seed: int) -> None:
        rng = np.random.default_rng(np.random.SeedSequence([_entropy(seed), _STREAM_CATALOGUE]))
        names = list(_CATEGORIES)
        n_categories = len(names)
        shares = np.array([_CATEGORIES[c][2] for c in names])
        self.category = rng.choice(n_categories, size=N_ITEMS, p=shares / shares.sum())
        # Category appeal (logit shift), a fixed spread so every seed has a learnable category effect.
        self.appeal = rng.permutation(np.linspace(-_APPEAL, _APPEAL, n_categories))
        self.quality = rng.normal(0.0, 0.5, N_ITEMS)
        median_price = np.array([_CATEGORIES[c][1] for c in names])[self.category]
        price = median_price * np.exp(rng.normal(0.0, _PRICE_SIGMA, N_ITEMS) + 0.15 * self.quality)
        self.price = np.maximum(np.floor(price), 0.0) + 0.99
        # Heavy-tailed popularity (impression share), higher for better items; mean 1 over the catalogue.
        weight = np.exp(0.8 * self.quality + rng.normal(0.0, 1.0, N_ITEMS))
        self.weight = weight / weight.sum()
        self.popularity = np.round(self.weight * N_ITEMS, 6)
        signal_words = list(_SIGNAL_WORDS)
        # Title words with an effect of their own: brand reputation and the signal words.
        self.word_effect = np.zeros(N_ITEMS)
        reputation = {c: rng.permutation(np.linspace(-_BRAND_SPREAD, _BRAND_SPREAD, len(_BRANDS[c]))) for c in names}
        titles = []
        for i in range(N_ITEMS):  # per item, not per row: 2,000 short titles
            category = names[self.category[i]]
            brand = int(rng.integers(len(_BRANDS[category])))
            self.word_effect[i] = reputation[category][brand]
            n_words = int(rng.integers(2, 8))  # besides the brand
            n_category = min(n_words - 1, int(rng.integers(1, 4)))
            words = list(rng.choice(_CATEGORIES[category][0], size=n_category, replace=False))
            if rng.random() < _SIGNAL_SHARE:
                word = signal_words[int(rng.integers(len(signal_words)))]
                words.append(word)
                self.word_effect[i] += _SIGNAL_WORDS[word]
            words += list(rng.choice(_GENERIC, size=max(0, n_words - len(words)), replace=False))
            order = rng.permutation(len(words))
            title = [_BRANDS[category][brand]] + [str(words[j]) for j in order]
            titles.append(" ".join(word.capitalize() for word in title))
        self.titles = pa.array(titles, type=pa.string())
        # Items sorted by category, with the cumulative popularity inside each category mapped onto
        # [c, c + 1): one searchsorted then draws an item of a given category by popularity.
        self.by_category = np.argsort(self.category, kind="stable")
        cat_sorted = self.category[self.by_category]
        w_sorted = self.weight[self.by_category]
        totals = np.bincount(cat_sorted, weights=w_sorted, minlength=n_categories)
        cum = np.cumsum(w_sorted)
        before = np.concatenate([[0.0], np.cumsum(totals)[:-1]])
        self.category_cdf = cat_sorted + (cum - before[cat_sorted]) / totals[cat_sorted]
        self.category_share = totals / totals.sum()


class _Users:
    """The users: activity, category preference and price sensitivity, fixed by the seed.

    User ``i`` is the same person whatever the count: each attribute has its own random stream,
    drawn in user order, so a smaller population is a prefix of a larger one.
    """

    def __init__(self, seed: int, n_users: int, n_categories: int) -> None:
        if n_users > _USER_ID_MODULUS:
            raise ValueError(f"at most {_USER_ID_MODULUS} simulated users ({_USER_ID_MODULUS * EVENTS_PER_USER} rows)")

        def stream(attribute: int) -> np.random.Generator:
            return np.random.default_rng(np.random.SeedSequence([_entropy(seed), _STREAM_USERS, attribute]))

        activity = np.exp(stream(0).normal(0.0, 1.0, n_users))  # heavy tail: a few very active users
        self.weight = activity / activity.sum()
        self.activity = np.round(activity / np.exp(0.5) * EVENTS_PER_USER, 4)  # expected events per day
        self.preference = stream(1).dirichlet(np.full(n_categories, 0.35), size=n_users)
        self.preference_cdf = np.cumsum(self.preference, axis=1)
        self.price_sensitivity = stream(2).gamma(2.0, 0.35, n_users)
        self.ids = _USER_ID_BASE + (np.arange(n_users, dtype=np.int64) * _USER_ID_MULTIPLIER) % _USER_ID_MODULUS


def simulate_click_log(date: dt.date, rows: int, seed: int = 0) -> pa.Table:
    """One day of a SIMULATED recommendation click log (schema :data:`SIMULATED_SCHEMA`), sorted by time.

    Deterministic: the same ``date``, ``rows`` and ``seed`` give the same table (and byte-identical
    Parquet); another date gives other events from the same items and users. Vectorised: a million
    rows take a few seconds. The click rate is about 15%; see the module docstring for the signal.
    """
    if rows < 0:
        raise ValueError(f"rows must be >= 0, not {rows}")
    if not isinstance(date, dt.date) or isinstance(date, dt.datetime):
        raise TypeError(f"date must be a datetime.date, not {type(date).__name__}")
    catalogue = _Catalogue(seed)
    n_categories = len(_CATEGORIES)
    users = _Users(seed, max(1, round(rows / EVENTS_PER_USER)), n_categories)
    rng = np.random.default_rng(np.random.SeedSequence([_entropy(seed), date.toordinal(), _STREAM_EVENTS]))

    # When: a daily traffic curve, microseconds inside the day, sorted.
    hour = rng.choice(24, size=rows, p=_HOURLY / _HOURLY.sum())
    offset = np.sort(hour * 3_600_000_000 + rng.integers(0, 3_600_000_000, size=rows))
    midnight = dt.datetime(date.year, date.month, date.day, tzinfo=dt.timezone.utc)
    start_us = (midnight - dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)) // dt.timedelta(microseconds=1)

    # Who and what: heavy-tailed users; the recommender draws the category from the user's
    # preference 60% of the time (else from the global mix), then an item of it by popularity.
    user = np.minimum(np.searchsorted(np.cumsum(users.weight), rng.random(rows) * users.weight.sum()),
                      len(users.weight) - 1)
    personal = rng.random(rows) < 0.6
    draw = rng.random(rows)
    from_preference = (users.preference_cdf[user] < draw[:, None] * users.preference_cdf[user, -1:]).sum(axis=1)
    from_global = np.searchsorted(np.cumsum(catalogue.category_share), draw * catalogue.category_share.sum())
    category = np.minimum(np.where(personal, from_preference, from_global), n_categories - 1)
    slot = np.searchsorted(catalogue.category_cdf, category + rng.random(rows))
    item = catalogue.by_category[np.minimum(slot, N_ITEMS - 1)]
    position = rng.integers(1, MAX_POSITION + 1, size=rows)

    # Click: examination (position bias) x relevance.
    item_category = catalogue.category[item]
    log_price = np.log(catalogue.price[item]) - np.log(25.0)
    relevance = (_BASE_LOGIT + _PREFERENCE_WEIGHT * np.sqrt(users.preference[user, item_category])
                 + catalogue.appeal[item_category] + catalogue.quality[item] + catalogue.word_effect[item]
                 - users.price_sensitivity[user] * log_price - 0.15 * np.log(np.maximum(users.activity[user], 1e-3)))
    examined = position.astype(np.float64) ** -0.55
    p_click = examined / (1.0 + np.exp(-relevance))
    clicked = (rng.random(rows) < p_click).astype(np.int8)

    ids = pc.binary_join_element_wise(pa.scalar(f"{date}-", pa.string()),
                                      pa.array(np.arange(rows, dtype=np.int64)).cast(pa.string()), "")
    columns = [
        ids,
        pa.array(start_us + offset, type=pa.timestamp("us", tz="UTC")),
        pa.array(users.ids[user], type=pa.int64()),
        pa.array(_ITEM_ID_BASE + item, type=pa.int64()),
        catalogue.titles.take(pa.array(item)),
        pa.array(catalogue.price[item], type=pa.float64()),
        pa.array(catalogue.popularity[item], type=pa.float64()),
        pa.array(users.activity[user], type=pa.float64()),
        pa.array(position, type=pa.int32()),
        pa.array(clicked, type=pa.int8()),
    ]
    return pa.Table.from_arrays(columns, schema=SIMULATED_SCHEMA)
