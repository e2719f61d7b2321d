"""3D VQA data: SQA3D and ScanQA files written by hand, .npy/.ply scenes, bad inputs, the scene generator."""

import json
import math

import numpy as np
import pytest
from omegaconf import OmegaConf

from mmllm.engine.registry import get_task
from mmllm.errors import ConfigError, DataError
from mmllm_3dvqa import data as d3
from mmllm_3dvqa import eval3d, scenes


def _write(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return str(path)


def _scene(n=300, seed=0):
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.uniform(-1, 1, (n, 3)), rng.integers(0, 256, (n, 3))], axis=1).astype(np.float32)


def sqa3d_files(tmp_path, answers=("left", "white", "two"), scenes_present=("scene0000_00", "scene0001_00")):
    questions = [
        {
            "scene_id": "scene0000_00",
            "situation": "I am sitting on the bed.",
            "alternative_situation": ["On the bed."],
            "question": "Is the door on my left or right?",
            "question_id": 220602000002,
        },
        {
            "scene_id": "scene0000_00",
            "situation": "I am facing the sink.",
            "alternative_situation": [],
            "question": "What color is the towel?",
            "question_id": 220602000017,
        },
        {
            "scene_id": "scene0001_00",
            "situation": "I am standing by the desk.",
            "alternative_situation": [],
            "question": "How many chairs are behind me?",
            "question_id": 220602000029,
        },
    ]
    annotations = [
        {
            "scene_id": q["scene_id"],
            "question_type": "N/A",
            "answer_type": "other",
            "question_id": q["question_id"],
            "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": 1}],
            "rotation": {"_x": 0, "_y": 0, "_z": 0.7071067811865476, "_w": 0.7071067811865476},
            "position": {"x": 0.5 * i, "y": -1.0, "z": 0},
        }
        for i, (q, a) in enumerate(zip(questions, answers))
    ]
    q = _write(tmp_path / "v1_balanced_questions_train_scannetv2.json", {"info": {}, "questions": questions})
    a = _write(tmp_path / "v1_balanced_sqa_annotations_train_scannetv2.json", {"info": {}, "annotations": annotations})
    (tmp_path / "scenes").mkdir(exist_ok=True)
    for k, s in enumerate(scenes_present):
        np.save(tmp_path / "scenes" / f"{s}.npy", _scene(seed=k))
    return q, a


def test_sqa3d_loader_joins_questions_and_annotations(tmp_path):
    q, a = sqa3d_files(tmp_path)
    records = d3.load_sqa3d(q, a)
    assert [r["question_id"] for r in records] == ["220602000002", "220602000017", "220602000029"]
    first = records[0]
    assert first["situation"] == "I am sitting on the bed." and first["answers"] == ["left"]
    assert first["qid_json"] == "220602000002"  # the file's own id (an int) for the results file
    assert first["pose"] == [0.0, -1.0, 0.0, 0.0, 0.0, 0.7071067811865476, 0.7071067811865476]
    # unlabelled split: questions alone
    assert d3.load_sqa3d(q, None)[2]["answers"] == []


def test_scanqa_loader(tmp_path):
    path = _write(
        tmp_path / "ScanQA_v1.0_val.json",
        [
            {
                "question_id": "val-scene0000-0",
                "question": "What is in the corner?",
                "answers": ["chair", "brown chair"],
                "scene_id": "scene0000_00",
                "object_ids": [3],
                "object_names": ["chair"],
            },
            {
                "question_id": "val-scene0000-1",
                "question": "Where is the lamp?",
                "answers": ["on desk"],
                "scene_id": "scene0000_00",
                "object_ids": [5],
                "object_names": ["lamp"],
            },
        ],
    )
    records = d3.load_scanqa(path)
    assert records[0]["answers"] == ["chair", "brown chair"] and records[0]["situation"] == ""
    assert records[1]["pose"] is None and records[1]["qid_json"] == '"val-scene0000-1"'
    test = _write(
        tmp_path / "ScanQA_v1.0_test_w_obj.json",
        [{"question_id": "test-scene0700-0", "question": "What is it?", "scene_id": "scene0700_00"}],
    )
    assert d3.load_scanqa(test)[0]["answers"] == []
    dup = _write(tmp_path / "dup.json", json.loads((tmp_path / "ScanQA_v1.0_val.json").read_text()) * 2)
    with pytest.raises(DataError, match="more than once"):
        d3.load_scanqa(dup)


def test_point_clouds_npy_and_ply(tmp_path):
    import trimesh

    points = _scene(50)
    np.save(tmp_path / "a.npy", points)
    assert np.array_equal(d3.read_point_cloud(tmp_path / "a.npy", True), points)
    assert d3.read_point_cloud(tmp_path / "a.npy", False).shape == (50, 3)
    colors = np.concatenate([points[:, 3:].astype(np.uint8), np.full((50, 1), 255, np.uint8)], axis=1)
    trimesh.PointCloud(points[:, :3], colors=colors).export(tmp_path / "a.ply")
    ply = d3.read_point_cloud(tmp_path / "a.ply", True)
    assert np.allclose(ply[:, :3], points[:, :3], atol=1e-6) and np.array_equal(ply[:, 3:], points[:, 3:])


def test_bad_point_clouds(tmp_path):
    np.save(tmp_path / "flat.npy", np.zeros((10, 2), np.float32))
    with pytest.raises(DataError, match=r"flat.npy.*shape \[10, 2\]"):
        d3.read_point_cloud(tmp_path / "flat.npy", False)
    np.save(tmp_path / "xyz.npy", np.zeros((10, 3), np.float32))
    with pytest.raises(DataError, match="at least 6 columns"):
        d3.read_point_cloud(tmp_path / "xyz.npy", True)
    nan = _scene(10)
    nan[4, 1] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    with pytest.raises(DataError, match=r"nan.npy.*NaN.*rows \[4\]"):
        d3.read_point_cloud(tmp_path / "nan.npy", True)
    with pytest.raises(DataError, match="missing.npy does not exist"):
        d3.read_point_cloud(tmp_path / "missing.npy", True)
    (tmp_path / "junk.npy").write_bytes(b"not a numpy file")
    with pytest.raises(DataError, match="cannot read"):
        d3.read_point_cloud(tmp_path / "junk.npy", True)


def test_bad_question_files(tmp_path):
    q, a = sqa3d_files(tmp_path)
    data = json.loads((tmp_path / "v1_balanced_sqa_annotations_train_scannetv2.json").read_text())
    short = _write(tmp_path / "short.json", {"annotations": data["annotations"][:2]})
    with pytest.raises(DataError, match="have no annotation.*220602000029"):
        d3.load_sqa3d(q, short)
    bad_pose = dict(data["annotations"][0], position={"x": float("nan"), "y": 0, "z": 0})
    nan_pose = _write(tmp_path / "nanpose.json", {"annotations": [bad_pose, *data["annotations"][1:]]})
    with pytest.raises(DataError, match="position.x"):
        d3.load_sqa3d(q, nan_pose)
    with pytest.raises(DataError, match="list under 'questions'"):
        d3.load_sqa3d(a, None)


def _config(tmp_path, q, a, **data_overrides):
    split = {"questions": q, "annotations": a}
    return OmegaConf.create(
        {
            "model": {"text": {"name": "minilm-l6"}, "llm_block": {"kind": "none"}},
            "datasets": {
                "mmllm_3dvqa": {
                    "scene_dir": str(tmp_path / "scenes"),
                    "num_points": 64,
                    "splits": {"train": split, "test": split},
                    **data_overrides,
                }
            },
            "run": {"task": "mmllm_3dvqa", "output_dir": str(tmp_path / "run")},
        }
    )


def test_datasets_and_out_of_vocabulary_answers(tmp_path):
    q, a = sqa3d_files(tmp_path)
    task = get_task("mmllm_3dvqa").build(
        _config(tmp_path, q, a, answer_vocab=_write(tmp_path / "v.json", ["left", "two"]))
    )
    task.build_preprocess()
    sets = task.build_datasets()
    train, test = sets["train"], sets["test"]
    assert len(train) == 2  # "white" is outside the vocabulary: not trained on
    assert len(test) == 3  # ... but still asked at test time
    item = test[1]
    assert item["points"].shape == (64, 6) and item["points"].dtype.is_floating_point
    assert float(item["points"][:, 3:].max()) <= 1.0  # colours scaled from 0-255
    assert item["answer_ids"] == []  # out of vocabulary: no target, no crash
    assert test[1]["points"].equal(test[1]["points"])  # evaluation points are fixed per question
    batch = task.collate([test[i] for i in range(3)])
    assert batch["targets"].tolist() == [[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]]
    assert batch["pose_mask"].tolist() == [True, True, True] and batch["points"].dtype.is_floating_point
    # the situation comes first, then [SEP], then the question
    text = task.tokenizer.decode(batch["input_ids"][0], skip_special_tokens=False)
    assert text.startswith("[CLS] i am sitting on the bed. [SEP] is the door on my left or right? [SEP]")
    # an out-of-vocabulary answer can only count as wrong: the best prediction is the gold answer elsewhere
    refs = test.references()
    report = eval3d.score(refs, {k: ["left", "two"] for k in refs})
    assert report["em10"] == round(100 * 2 / 3, 2)
    # the no-situation ablation blanks the situation
    blank = get_task("mmllm_3dvqa").build(_config(tmp_path, q, a, blank_situation=True))
    blank.build_preprocess()
    item = blank.build_datasets()["test"][0]
    assert item["situation"] == "" and item["question"] == "Is the door on my left or right?"


def test_question_whose_scene_is_absent(tmp_path):
    q, a = sqa3d_files(tmp_path, scenes_present=("scene0000_00",))
    task = get_task("mmllm_3dvqa").build(_config(tmp_path, q, a))
    task.build_preprocess()
    with pytest.raises(DataError, match=r"scene0001_00.*scene0001_00\.npy"):
        task.build_datasets()


def test_config_errors(tmp_path):
    q, a = sqa3d_files(tmp_path)
    with pytest.raises(ConfigError, match="ScanQA takes its file as .annotations."):
        get_task("mmllm_3dvqa").build(_config(tmp_path, q, a, format="scanqa"))
    with pytest.raises(ConfigError, match="num_pionts"):
        get_task("mmllm_3dvqa").build(_config(tmp_path, q, a, num_pionts=5))


# ---------------------------------------------------------------------- the generator
def test_egocentric_directions_by_hand():
    # agent at the origin facing +x: +y is on its left; turned around (facing -x), +y is on its right
    assert scenes.side((0, 0), 0.0, (0.2, 1.0)) == "left"
    assert scenes.side((0, 0), math.pi, (0.2, 1.0)) == "right"
    assert scenes.front_or_behind((0, 0), 0.0, (1.0, 0.3)) == "in front"
    assert scenes.front_or_behind((0, 0), math.pi, (1.0, 0.3)) == "behind"
    assert scenes.direction((1, 1), math.pi / 2, (1.1, 3)) == "forward"  # facing +y, target straight ahead
    assert scenes.direction((1, 1), math.pi / 2, (-1, 1.2)) == "left"
    assert scenes.direction((1, 1), math.pi / 2, (3, 0.9)) == "right"
    assert scenes.direction((1, 1), math.pi / 2, (1, -2)) == "backward"
    q = scenes.yaw_quaternion(math.pi / 2)
    assert math.isclose(q["_z"], math.sqrt(0.5)) and math.isclose(q["_w"], math.sqrt(0.5))


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    root = tmp_path_factory.mktemp("pbscenes")
    settings = scenes.GeneratorSettings(seed=3, num_scenes=12, points_per_object=64, floor_points=64)
    counts = scenes.generate(root, settings)
    return root, settings, counts


def test_generator_is_deterministic_and_writes_sqa3d_files(generated, tmp_path):
    root, settings, counts = generated
    again = tmp_path / "again"
    assert scenes.generate(again, settings) == counts
    files = sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file() and not p.name.startswith("."))
    for rel in files:
        assert (root / rel).read_bytes() == (again / rel).read_bytes(), rel
    assert scenes.is_generated(root, settings) and not scenes.is_generated(root)  # settings are recorded
    # the same loader reads the generated files as a user's SQA3D files
    for split in scenes.SPLITS:
        records = d3.load_sqa3d(
            root / scenes.QUESTIONS_FILE.format(split=split), root / scenes.ANNOTATIONS_FILE.format(split=split)
        )
        assert len(records) == counts[split] > 0
    cloud = d3.read_point_cloud(root / scenes.SCENE_FILE.format(scene_id="pbscene0000_00"), True)
    assert cloud.shape[1] == 6 and cloud[:, 2].min() >= 0 and cloud[:, 3:].max() <= 255


def test_situation_decides_left_and_right(generated):
    """Every left/right answer follows from the written pose and the scene graph (recomputed here from
    the quaternion), and the same question in the same scene flips with the situation."""
    root, _, _ = generated
    graphs = json.loads((root / "scene_graphs.json").read_text())
    answers_by_question = {}
    checked = 0
    for split in scenes.SPLITS:
        qs = json.loads((root / scenes.QUESTIONS_FILE.format(split=split)).read_text())["questions"]
        anns = json.loads((root / scenes.ANNOTATIONS_FILE.format(split=split)).read_text())["annotations"]
        for q, a in zip(qs, anns):
            answer = a["answers"][0]["answer"]
            answers_by_question.setdefault((q["scene_id"], q["question"]), set()).add(answer)
            if not q["question"].endswith("on my left or right?"):
                continue
            phrase = q["question"][len("Is the ") : -len(" on my left or right?")]
            objects = graphs[q["scene_id"]]["objects"]
            target = [
                o
                for o in objects
                if phrase in (o["category"], f"{o['color']} {o['category']}")
                and (
                    phrase == f"{o['color']} {o['category']}"
                    or sum(p["category"] == o["category"] for p in objects) == 1
                )
            ]
            assert len(target) == 1, phrase
            yaw = 2 * math.atan2(a["rotation"]["_z"], a["rotation"]["_w"])
            dx = target[0]["position"][0] - a["position"]["x"]
            dy = target[0]["position"][1] - a["position"]["y"]
            cross = math.cos(yaw) * dy - math.sin(yaw) * dx  # z of forward x (target - agent): > 0 on the left
            assert answer == ("left" if cross > 0 else "right"), (q, a)
            checked += 1
    assert checked >= 10
    flipped = [k for k, v in answers_by_question.items() if {"left", "right"} <= v]
    assert flipped, "no question changes its answer with the situation"


def test_question_family_is_recovered_from_the_text():
    """The text rule names the template each generated question came from (the generator records it)."""
    settings = scenes.GeneratorSettings(seed=5, num_scenes=6, points_per_object=32, floor_points=32)
    canonical = scenes._canonical_points(settings.seed)
    seen = set()
    for index in range(settings.num_scenes):
        _, _, records = scenes.generate_scene(index, settings, canonical)
        for r in records:
            assert scenes.question_family(r["question"]) == r["family"], r["question"]
            seen.add(r["family"])
    assert {"side", "count", "exist"} <= seen
    assert scenes.question_family("What is the chair made of?") is None  # not a template: a real SQA3D question


def test_situated_breakdown_by_hand():
    refs = {
        "1": {"question": "Is the duck on my left or right?", "answers": ["left"]},
        "2": {"question": "Can I see the mug without turning around?", "answers": ["yes"]},
        "3": {"question": "How many ducks are there?", "answers": ["two"]},
    }
    preds = {"1": ["left", "right"], "2": ["no", "yes"], "3": ["two"]}
    # situated: q1 right, q2 wrong at rank 1 -> 50%; general: q3 right -> 100%
    assert scenes.situated_breakdown(refs, preds) == {
        "em1_situated": 50.0,
        "num_situated": 2,
        "em1_general": 100.0,
        "num_general": 1,
    }
    refs["4"] = {"question": "What is on the table?", "answers": ["cup"]}  # a user's question: no breakdown
    preds["4"] = ["cup"]
    assert scenes.situated_breakdown(refs, preds) is None
