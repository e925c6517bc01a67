"""SID-based item vectors: a drop-in item table for the encoder, with vectors for new items from their SIDs."""

from __future__ import annotations

import torch

from models.sid_item_table import SidItemTable
from models.user_encoder import UserEncoder, UserEncoderConfig, full_softmax_loss


def codes(n: int, levels: int = 2, k: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, k, (n + 1, levels), generator=torch.Generator().manual_seed(seed))


def test_an_items_vector_is_the_sum_of_its_code_vectors_and_padding_is_zero():
    table = SidItemTable(codes(10), codes_per_level=4, d_model=8)
    weight = table.weight
    c = table.codes[3]
    expected = table.code_emb.weight[c[0]] + table.code_emb.weight[4 + c[1]]
    torch.testing.assert_close(weight[3], expected)
    assert torch.all(weight[0] == 0) and weight.shape == (11, 8)
    assert table.parameter_count() == 2 * 4 * 8


def test_items_sharing_a_sid_share_a_vector_unless_a_residual_separates_them():
    c = codes(6)
    c[5] = c[2]
    plain, with_residual = SidItemTable(c, 4, 8), SidItemTable(c, 4, 8, residual=True)
    torch.testing.assert_close(plain.weight[5], plain.weight[2])
    with torch.no_grad():
        with_residual.residual[5] += 1.0
    assert not torch.allclose(with_residual.weight[5], with_residual.weight[2])


def test_the_encoder_trains_with_it_and_new_items_get_vectors_from_their_sids():
    torch.manual_seed(0)
    model = UserEncoder(UserEncoderConfig(num_items=10, max_len=6, d_model=8, n_heads=2))
    model.item_emb = SidItemTable(codes(10), 4, 8, residual=True)
    ids = torch.randint(1, 11, (4, 6))
    loss = full_softmax_loss(model, model(ids), torch.randint(1, 11, (4, 6)))
    loss.backward()
    assert model.item_emb.code_emb.weight.grad is not None and model.item_embeddings().shape == (11, 8)
    new = codes(2, seed=1)[1:]
    model.item_emb.extend(new)
    weight = model.item_emb.weight
    assert weight.shape == (13, 8)
    code_vectors = model.item_emb.code_emb.weight
    torch.testing.assert_close(weight[11], code_vectors[new[0, 0]] + code_vectors[4 + new[0, 1]])
