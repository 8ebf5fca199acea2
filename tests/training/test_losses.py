import pytest
import torch
import torch.nn.functional as F

from common.classes import IGNORE_INDEX
from training.losses import (
    class_balanced_weights,
    dice_loss,
    focal_loss,
    prepare_target,
    total_loss,
)
from training.model import build_model


def onehot(target):
    return F.one_hot(target.clamp(max=3), 4).permute(0, 3, 1, 2).float()


def test_class_balanced_weights_follow_the_formula():
    counts = [1_000_000, 5_000, 800, 0]
    w = class_balanced_weights(counts, beta=0.9999)
    raw = [(1 - 0.9999) / (1 - 0.9999**n) for n in counts[:3]]
    expected = torch.tensor([*raw, 0.0]) * 4 / sum(raw)
    torch.testing.assert_close(w, expected.float())
    assert w[2] > w[1] > w[0]  # rarer classes weigh more
    with pytest.raises(ValueError, match="no labelled pixels"):
        class_balanced_weights([0, 0, 0, 0])


def test_perfect_prediction_costs_nothing_and_wrong_costs_more():
    torch.manual_seed(0)
    target = torch.randint(0, 4, (2, 16, 16))
    w = torch.ones(4)
    assert focal_loss(onehot(target), prepare_target(target, w)) == 0
    assert dice_loss(onehot(target), prepare_target(target, torch.ones(4))) == 0
    wrong = onehot((target + 1) % 4) * 0.97 + 0.01
    assert focal_loss(wrong, prepare_target(target, w)) > 1.0
    assert dice_loss(wrong, prepare_target(target, torch.ones(4))) > 0.9


def test_ignored_pixels_do_not_count():
    target = torch.zeros(1, 8, 8, dtype=torch.long)
    target[0, :, 4:] = IGNORE_INDEX
    probs = onehot(torch.zeros_like(target))
    probs[0, :, :, 4:] = torch.tensor([0.0, 1.0, 0.0, 0.0])[:, None, None]  # wrong, but ignored
    assert focal_loss(probs, prepare_target(target, torch.ones(4))) == 0
    assert dice_loss(probs, prepare_target(target, torch.ones(4))) == 0


def test_a_batch_of_padding_alone_costs_nothing_and_keeps_gradients_finite():
    target = torch.full((2, 8, 8), IGNORE_INDEX)
    probs = torch.softmax(torch.randn(2, 4, 8, 8), 1).requires_grad_()
    prepared = prepare_target(target, torch.ones(4))
    loss = focal_loss(probs, prepared) + dice_loss(probs, prepared)
    assert loss == 0
    loss.backward()
    assert torch.isfinite(probs.grad).all()


def test_losses_equal_a_per_pixel_reference_with_ignored_pixels():
    gen = torch.Generator().manual_seed(3)
    probs = torch.softmax(torch.randn(3, 4, 20, 20, generator=gen), 1)
    target = torch.randint(0, 3, (3, 20, 20), generator=gen)  # spray_can (3) absent
    target[torch.rand(3, 20, 20, generator=gen) < 0.2] = IGNORE_INDEX
    w = torch.tensor([0.5, 2.0, 3.0, 7.0])
    keep = target != IGNORE_INDEX
    y = target[keep]
    p_y = probs.permute(0, 2, 3, 1)[keep].gather(1, y[:, None]).squeeze(1)
    focal = (-w[y] * (1 - p_y) ** 2 * p_y.log()).sum() / w[y].sum()
    dice = []
    for c in (0, 1, 2):
        p, g = probs.permute(0, 2, 3, 1)[keep][:, c], (y == c).float()
        dice.append(1 - (2 * (p * g).sum() + 1) / (p.sum() + g.sum() + 1))
    prepared = prepare_target(target, w)
    torch.testing.assert_close(focal_loss(probs, prepared), focal)
    torch.testing.assert_close(dice_loss(probs, prepared), torch.stack(dice).mean())


def test_dice_leaves_out_classes_absent_from_the_target():
    target = torch.zeros(1, 8, 8, dtype=torch.long)
    target[0, :2, :2] = 1
    probs = onehot(target) * 0.7 + 0.075  # some mass on every class, spray_can included
    got = dice_loss(probs, prepare_target(target, torch.ones(4)))
    expected = []
    for c in (0, 1):  # only the classes in the target
        p, g = probs[0, c], (target[0] == c).float()
        expected.append(1 - (2 * (p * g).sum() + 1) / (p.sum() + g.sum() + 1))
    torch.testing.assert_close(got, torch.stack(expected).mean())


def test_total_loss_sums_local_and_weighted_msm_and_backpropagates(tiny_config):
    torch.manual_seed(0)
    model = build_model(tiny_config.model)
    images = torch.randn(2, 3, 518, 518)
    target = torch.zeros(2, 518, 518, dtype=torch.long)
    target[:, 100:200, 100:300] = 2
    loss, parts = total_loss(model(images), target, torch.ones(4), (0.1, 0.1, 0.1, 0.7))
    assert parts["loss"] == pytest.approx(parts["local"] + parts["msm"], rel=1e-5)
    loss.backward()
    assert model.text.prompts.context.grad is not None


def test_each_msm_stage_counts_by_its_own_weight(tiny_config):
    torch.manual_seed(0)
    with torch.no_grad():
        output = build_model(tiny_config.model)(torch.randn(1, 3, 518, 518))
    target = torch.zeros(1, 518, 518, dtype=torch.long)
    target[:, 50:150, 200:400] = 1

    def msm(stage_weights):
        return total_loss(output, target, torch.ones(4), stage_weights)[1]["msm"]

    alone = [msm(tuple(float(i == k) for i in range(4))) for k in range(4)]
    weights = (0.2, 0.3, 0.5, 2.0)  # not summing to 1: equal weights would not pass
    expected = sum(w * a for w, a in zip(weights, alone, strict=True))
    assert msm(weights) == pytest.approx(expected, rel=1e-5)
    assert len(set(alone)) == 4  # the stages' terms differ, so each weight shows


def test_auto_beta_weighs_classes_by_their_pixel_counts():
    counts = [50_000_000, 500_000, 100_000, 0]
    saturated = class_balanced_weights(counts, beta=0.9999)
    assert saturated[1] / saturated[0] < 1.01  # millions of pixels: uniform, no balancing
    auto = class_balanced_weights(counts, beta="auto")
    beta = 1 - 1 / 50_000_000
    raw = [(1 - beta) / (1 - beta**n) for n in counts[:3]]
    torch.testing.assert_close(auto, (torch.tensor([*raw, 0.0]) * 4 / sum(raw)).float())
    assert 60 < auto[1] / auto[0] < 100 and 300 < auto[2] / auto[0] < 500


def test_focal_loss_is_a_weighted_mean():
    target = torch.tensor([[[0, 0, 0, 1]]])
    probs = onehot(target) * 0.5 + 0.125  # p_y = 0.625 everywhere
    per_pixel = -((1 - 0.625) ** 2) * torch.log(torch.tensor(0.625))
    # uniform weights: the plain mean; any scale of the weights: the same value
    torch.testing.assert_close(focal_loss(probs, prepare_target(target, torch.ones(4))), per_pixel)
    torch.testing.assert_close(
        focal_loss(probs, prepare_target(target, torch.full((4,), 1e-3))), per_pixel
    )
    # a rare class weighted 99x counts as much as 99 normal pixels
    wrong = probs.clone()
    wrong[0, :, 0, 3] = torch.tensor([0.9, 0.05, 0.025, 0.025])  # the motor pixel is missed
    w = torch.tensor([1.0, 99.0, 1.0, 1.0])
    miss = -((1 - 0.05) ** 2) * torch.log(torch.tensor(0.05))
    torch.testing.assert_close(
        focal_loss(wrong, prepare_target(target, w)), (3 * per_pixel + 99 * miss) / 102
    )


def test_two_class_losses_for_binary_prompts():
    from training.losses import merge_anomaly_classes

    target = torch.tensor([[[0, 1, 2, 3, 255]]])
    merged = merge_anomaly_classes(target)
    assert merged.tolist() == [[[0, 1, 1, 1, 255]]]
    probs = F.one_hot(merged.clamp(max=1), 2).permute(0, 3, 1, 2).float()
    assert focal_loss(probs, prepare_target(merged, torch.ones(2))) == 0
    assert dice_loss(probs, prepare_target(merged, torch.ones(2))) == 0
