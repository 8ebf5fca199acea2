import pytest

from common.classes import ANOMALY_CLASSES, CLASS_NAMES, class_index


def test_class_order_is_the_mask_contract():
    assert CLASS_NAMES == ("normal", "motor", "cable", "spray_can")
    assert CLASS_NAMES[1:] == ANOMALY_CLASSES


@pytest.mark.parametrize(
    ("name", "index"),
    [("motor", 1), ("Cable", 2), ("spray can", 3), ("Spray-Can", 3), (" spray_can ", 3)],
)
def test_class_index_accepts_tool_spellings(name, index):
    assert class_index(name) == index


@pytest.mark.parametrize("name", ["normal", "tire", "", "motors"])
def test_class_index_refuses_other_names(name):
    with pytest.raises(KeyError, match="known classes: motor, cable, spray_can"):
        class_index(name)
