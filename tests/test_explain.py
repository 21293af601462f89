"""dp_autoencoder.explain: the plain-words account of a certify run, on records made by hand."""

import math

from scipy.stats import norm

from dp_autoencoder.explain import explain_run, largest_radius

NOISE = {"kind": "gaussian", "L": 0.1, "scale": 0.25}
CLASSES = ["tabby, tabby cat", "tiger cat", "espresso", "bubble", "analog clock"]


def record(idx, label, undefended, predict, radius, correct=None):
    return {"idx": idx, "label": label, "undefended_predict": undefended, "predict": predict, "radius": radius,
            "status": "ok", "n0": 20, "n": 100, "alpha": 0.001,
            "correct": correct if correct is not None else int(label >= 0 and predict == label and radius >= 0)}


def test_largest_radius_closed_form():
    assert math.isclose(largest_radius(100, 0.001, "gaussian", 0.25), 0.25 * norm.ppf(0.001 ** 0.01))
    assert math.isclose(largest_radius(1000, 0.001, "laplace", 0.2, 2.0), -0.1 * math.log(2 * (1 - 0.001 ** 0.001)))


def test_explain_counts_kept_abstained_changed_and_labels():
    records = [record(0, 0, 1, 2, 0.1),        # labelled tabby, classifier says tiger cat, defended espresso
               record(1, 2, 2, 2, 0.31),       # espresso kept and certified
               record(2, 4, 3, -1, -1.0),      # clock: the classifier says bubble, the defense abstains
               record(3, -1, 2, 2, 0.2)]       # unlabelled, kept
    baseline = [record(0, 0, 1, -1, -1.0), record(1, 2, 2, 2, 0.38), record(2, 4, 3, -1, -1.0),
                record(3, -1, 2, -1, -1.0)]
    text = explain_run(records, front_end="ae", classifier="clf", noise=NOISE, sensitivity=1.0, baseline=baseline,
                       names=["chelsea", "coffee", "clock", "x"], class_names=CLASSES)
    lines = text.splitlines()
    assert lines[0].startswith("What ran: the front-end ae (Gaussian noise, sigma = 0.250, L = 0.1) before the frozen "
                               "classifier clf") and "n0 = 20" in lines[0] and "n = 100" in lines[0]
    assert f"no radius can exceed {largest_radius(100, 0.001, 'gaussian', 0.25):.2f}" in lines[0]
    assert lines[1] == ("With the front-end: 2 of 4 images keep the undefended classifier's prediction with a certificate "
                        "(coffee 0.31, x 0.20); 1 abstains (the votes are too split to certify with n = 100: clock); "
                        "1 changes the prediction (chelsea: tiger cat -> espresso).")
    assert lines[2] == "The same noise on the pixels, no front-end: 1 of 4 kept with a certificate (coffee 0.38)."
    assert lines[3].startswith("Labels: 3 of the 4 images have one") and "right on 1 of 3" in lines[3]
    assert "chelsea: it says tiger cat, labelled tabby" in lines[3] and "not of the defense" in lines[3]
    assert lines[3].endswith("defended and certified: 1 of 3.")


def test_explain_fully_labelled_has_no_label_paragraph_and_no_baseline():
    text = explain_run([record(0, 2, 2, 2, 0.3)], front_end="ae", classifier="clf", noise=NOISE, sensitivity=1.0)
    assert "Labels:" not in text and "no front-end" not in text and "1 of 1 images keep" in text
    assert explain_run([], front_end="ae", classifier="clf", noise=NOISE, sensitivity=1.0) == "No image was certified."
