"""`factory bench generative`'s evaluation: consumed items masked inside the beam vs after decoding."""

import numpy as np

from jobs.bench.generative import evaluate
from jobs.steps.generative_training import Examples, generate
from models.generative import SidVocabulary, TrieTables
from tests.steps.test_generative import LEVELS, catalog, model_for


def test_masking_inside_the_beam_spends_no_slot_on_consumed_items_and_keeps_full_lists(one_torch_thread):
    vocab, tokens = SidVocabulary(("a",), LEVELS), catalog(20)
    model, trie = model_for(vocab, seed=3), TrieTables(tokens, LEVELS)
    users = 4
    examples = Examples([tokens[:3]] * users, [["a"]] * users, None, None)
    sids = np.vstack([np.zeros((1, len(LEVELS)), np.int64), tokens])  # item i + 1 = trie row i
    unmasked, _ = generate(model, examples, trie, beams=5)
    seen = [unmasked[u, :3] + 1 for u in range(users)]  # each user "consumed" their 3 best raw items
    ev = evaluate(model, examples, trie, sids, seen, targets=unmasked[:, 3] + 1, beams=5, unseen=np.zeros(users, bool))
    assert ev["beam_consumed_share"]["raw"] == 3 / 5
    assert ev["beam_consumed_share"]["masked_in_beam"] == 0.0
    assert ev["mean_list_masked_in_beam"] == 5 and ev["mean_list_after_rerank"] == 2
    assert ev["beam5"]["hr1"] == 1.0  # the 4th raw item is the best one left once the 3 are masked
