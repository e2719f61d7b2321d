"""The analysis inputs' exact foregrounds and backgrounds, on hand-drawn images: easy-VQA's shape-on-a-solid-
colour masks, MNIST digits composited onto a seeded texture (Pang et al., ICLR 2024, §6)."""

import numpy as np
import pytest
import torch

from mmllm.errors import DataError
from mmllm_vqa.analysis import border_colour, first_question_per_image, foreground_mask
from vision.classification.analysis import TEXTURE_RANGE, composite, foreground, texture

BACKGROUND, SHAPE = (230, 230, 250), (200, 30, 30)


def hand_drawn():
    """8x8, lavender background; a red 3x3 square at rows 2-4, cols 2-4 reaching the right edge through
    row 3; anti-aliased pixels: (5, 3) a 50 % blend (counts), (1, 3) a 1-unit blend (background)."""
    image = np.full((8, 8, 3), BACKGROUND, dtype=np.uint8)
    image[2:5, 2:5] = SHAPE
    image[3, 5:] = SHAPE  # the shape touches the border: 1 of the 28 border pixels
    image[5, 3] = (215, 130, 140)  # halfway between background and red
    image[1, 3] = (229, 230, 250)  # one unit off the background: below the tolerance
    return image


def test_easy_vqa_foreground_by_hand():
    image = hand_drawn()
    assert tuple(border_colour(image)) == BACKGROUND
    expected = torch.zeros(8, 8, dtype=torch.bool)
    expected[2:5, 2:5] = True
    expected[3, 5:] = True
    expected[5, 3] = True
    assert torch.equal(foreground_mask(image), expected)
    assert foreground_mask(image, tolerance=0)[1, 3]  # any difference counts at tolerance 0
    assert foreground_mask(image, tolerance=0).sum() == expected.sum() + 1
    with pytest.raises(DataError, match="uint8"):
        foreground_mask(image.astype(np.float32))


def test_border_colour_is_the_most_common_even_when_the_shape_fills_an_edge():
    image = np.full((4, 4, 3), 7, dtype=np.uint8)
    image[:, -1] = 200  # the whole right edge is shape: 4 of 12 border pixels
    assert tuple(border_colour(image)) == (7, 7, 7)


def test_first_question_per_image_in_file_order():
    questions = [{"image_id": 5}, {"image_id": 5}, {"image_id": 2}, {"image_id": 5}, {"image_id": 9}, {"image_id": 2}]
    assert first_question_per_image(questions, 2) == [0, 2]
    assert first_question_per_image(questions, 10) == [0, 2, 4]


def test_texture_is_seeded_smooth_and_in_range():
    a, b = texture(28, 28, seed=3), texture(28, 28, seed=3)
    assert torch.equal(a, b) and not torch.equal(a, texture(28, 28, seed=4))
    low, high = TEXTURE_RANGE
    assert a.min().item() == pytest.approx(low, abs=1e-6) and a.max().item() == pytest.approx(high, abs=1e-6)
    # smooth: neighbouring pixels differ far less than the texture's range
    assert (a[:, 1:] - a[:, :-1]).abs().max() < 0.5 * (high - low)
    # not flat within a 7-pixel patch (a per-patch constant would make the background trivially uniform)
    assert a[:7, :7].std() > 0.01


def test_composite_and_clean_foreground_by_hand():
    digit = torch.tensor([[0.0, 1.0], [0.5, 0.2]])
    back = torch.tensor([[0.4, 0.4], [0.2, 0.5]])
    # alpha + (1 - alpha) * background: 0 + 0.4, 1 + 0, 0.5 + 0.5 * 0.2, 0.2 + 0.8 * 0.5
    assert composite(digit, back).flatten().tolist() == pytest.approx([0.4, 1.0, 0.6, 0.6], abs=1e-6)
    # the mask comes from the clean digit: above half its maximum (0.5 is not above 0.5)
    assert foreground(digit[None]).tolist() == [[[False, True], [False, False]]]
