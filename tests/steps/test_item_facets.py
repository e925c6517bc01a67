"""Catalog facets as codes of the encoder's item table (jobs/steps/item_facets.py)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from jobs.steps import item_facets


def test_a_facet_value_gets_the_same_bucket_on_every_call_and_the_levels_hash_apart():
    values = pa.array(["jazz", "rock", "jazz", None], pa.string())
    first = item_facets.hashed(values, "genre", 1 << 20)
    assert first[0] == first[2] and first[0] != first[1]
    np.testing.assert_array_equal(first, item_facets.hashed(values, "genre", 1 << 20))  # no per-process salt
    assert first[3] == item_facets.hashed(pa.array([""]), "genre", 1 << 20)[0]  # null = the empty value
    assert item_facets.hashed(pa.array(["jazz"]), "creator", 1 << 20)[0] != first[0]
    assert ((first >= 0) & (first < 1 << 20)).all()


def test_each_item_row_holds_its_genre_and_creator_and_items_without_a_catalog_row_the_empty_ones():
    codes = item_facets.codes_of(np.array([2, 1, 9]), pa.array(["jazz", "rock", "pop"]),
                                 pa.array(["Ann", "Bob", "Cy"]), num_items=3, buckets=1 << 20)
    assert codes.shape == (4, len(item_facets.LEVELS))
    genre = item_facets.hashed(pa.array(["jazz", "rock"]), "genre", 1 << 20)
    creator = item_facets.hashed(pa.array(["Ann", "Bob"]), "creator", 1 << 20)
    assert codes[2].tolist() == [genre[0], creator[0]] and codes[1].tolist() == [genre[1], creator[1]]
    empty = [item_facets.hashed(pa.array([""]), level, 1 << 20)[0] for level in item_facets.LEVELS]
    assert codes[3].tolist() == empty and codes[0].tolist() == empty  # item 3 has no row; 9 is beyond num_items
