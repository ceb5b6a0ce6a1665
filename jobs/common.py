"""What several steps share (kept in the library, caravan.ml.features, so the promotion gate uses the same code)."""

from caravan.ml.features import SPLITS, feature_matrix, feature_types, labels, load_split, numeric_columns

__all__ = ["SPLITS", "feature_matrix", "feature_types", "labels", "load_split", "numeric_columns"]
