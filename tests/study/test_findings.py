"""The report's findings from hand-made results: which checkpoints are paired, and what is said."""

from earful.study.report import findings


def rec(pretrain, b, ck, step, hours, cer, seed=1):
    return {"pretrain": pretrain, "tag": pretrain, "batch_seconds": b, "checkpoint": ck, "step": step,
            "hours_padded": hours, "seed": seed, "label_set": "10h", "split": "test", "wer": min(1.0, cer + 0.2),
            "cer": cer}


def test_fixed_hours_pairs_equal_steps_within_ten_percent_and_equal_hours() -> None:
    ft = []
    for seed, shift in ((1, 0.0), (2, 0.02), (3, -0.02)):
        ft += [rec(f"8s-seed{seed}", 8, "final", 675, 1.4, 0.50 + shift, seed),
               rec(f"8s-seed{seed}", 8, "hours-0.75", 360, 0.75, 0.60 + shift, seed),
               rec(f"16s-seed{seed}", 16, "final", 338, 1.4, 0.55 + shift, seed),
               rec(f"16s-seed{seed}", 16, "hours-0.75", 180, 0.75, 0.65 + shift, seed),
               rec(f"32s-seed{seed}", 32, "final", 169, 1.4, 0.80 + shift, seed),
               rec(f"32s-seed{seed}", 32, "hours-0.75", 90, 0.75, 0.85 + shift, seed),
               rec("scratch", None, "init", 0, 0.0, 0.75 + shift, seed)]
    text = "\n".join(findings(ft, {"mode": "fixed-hours", "hours": 1.5}, "test", "cer"))
    # 8 s @ 0.75 h (step 360) pairs with 16 s final (338); 16 s @ 0.75 h (180) with 32 s final (169)
    # every neighbour comparison says how often a 2 SE call is chance with its seeds (the baseline's alone had)
    assert ("Near-equal steps (within 10 %: 8 s at step 360, 16 s at step 338), 10h:** 8 s → 16 s: CER lower "
            "(beyond 2 standard errors); with 3 seeds a side a 2 SE call is chance in about 12 % of comparisons "
            "(8 s: 60.0 ± 1.2, 16 s: 55.0 ± 1.2)") in text
    assert ("Near-equal steps (within 10 %: 16 s at step 180, 32 s at step 169), 10h:** 16 s → 32 s: CER higher "
            "(beyond 2") in text
    assert "step 90" not in text and "step 675" not in text  # nothing within 10 % of them
    assert "55.0 ± 1.2). Caveat: 8 s is a checkpoint within its run, taken before its learning rate" in text
    assert ("Equal nominal hours (final, 1.5 h), 10h:** CER by batch 8 s: 50.0 ± 1.2, 16 s: 55.0 ± 1.2, "
            "32 s: 80.0 ± 1.2 (spread 30.0 points); 8 s → 16 s: CER higher (beyond 2 standard errors); 16 s → 32 s: "
            "CER higher (beyond 2 standard errors); with 3 seeds a side a 2 SE call is chance in about 12 % of "
            "comparisons.") in text
    # every batch size against the baseline, not the best alone (a best of k picked after the fact beats it by chance)
    assert ("Pre-training vs scratch, 10h:** scratch CER 75.0 ± 1.2 %, against each of 3 batch sizes: pre-trained "
            "is lower (beyond 2 standard errors) at 8, 16 s; pre-trained is higher (beyond 2 standard errors) at 32 s "
            "(with 3 seeds a side a 2 SE call is chance in about 12 % of comparisons); best pre-trained (8 s) 50.0 ± "
            "1.2 %") in text


def test_a_paper_shaped_study_reports_test_clean_and_its_best_checkpoints() -> None:
    """LibriSpeech splits and only the best checkpoints fine-tuned (the paper's recipe): the findings are
    about test-clean and the best checkpoints, not empty."""
    from earful.study.report import end_checkpoint, main_split_of

    assert main_split_of(["dev-clean", "dev-other", "test-clean", "test-other"]) == "test-clean"
    assert main_split_of(["dev", "test"]) == "test" and main_split_of(["valid"]) == "valid"
    ft = []
    for split, shift in (("dev-clean", 0.0), ("test-clean", 0.01)):
        for seed in (1, 2):
            for pre, b, cer in (("87.5s", 87.5, 0.30), ("600s", 600.0, 0.20), ("scratch", None, 0.60)):
                r = rec(f"{pre}-seed{seed}", b, "init" if b is None else "best", 400000, 1.0, cer + shift + 0.01 * seed,
                        seed)
                ft.append({**r, "split": split})
    assert end_checkpoint(ft) == "best"
    text = "\n".join(findings(ft, {"mode": "fixed-steps", "steps": 400000}, "test-clean", "cer"))
    assert "### In CER (`test-clean`)" in text
    assert "87.5 s → 600 s: CER lower" in text and "best pre-trained (600 s) 22.5" in text


def test_a_difference_without_spread_is_not_called_beyond_2_standard_errors() -> None:
    """[0.50, 0.50] against [0.51, 0.51] was 'lower (beyond 2 standard errors)': an SE of 0 is no measure of the
    noise (the claims' test refuses it the same way)."""
    from earful.study.report import compare

    assert compare([0.50, 0.50], [0.51, 0.51]) == "lower (no spread over seeds: not judged)"
    assert compare([0.3, 0.3], [0.3 + 1e-9] * 2) == "equal"  # float noise (float32 values), as in the claims
    assert compare([0.50, 0.52], [0.60, 0.62]) == "lower (beyond 2 standard errors)"


def test_the_report_and_the_claims_call_a_difference_beyond_2_se_by_one_rule() -> None:
    """report.compare had its own 2 SE test (|d| < 2 SE: within), the claims theirs (gain > 2 SE: beyond); at the
    boundary they disagreed: [0, 1] against [√2, 1 + √2] was "beyond" in the report and not in the claims."""
    import math
    import random

    from earful.study.claims import Cell, beyond_2se
    from earful.study.report import compare

    rng = random.Random(0)
    cases = [([0.0, 1.0], [math.sqrt(2), 1 + math.sqrt(2)])]
    cases += [([rng.gauss(0, 1) for _ in range(n)], [rng.gauss(1, 1) for _ in range(n)])
              for n in (2, 3, 5) for _ in range(200)]
    for a, b in cases:
        ca, cb = Cell(a), Cell(b)
        claims_say = beyond_2se(abs(ca.mean - cb.mean), math.sqrt(ca.se**2 + cb.se**2))
        assert ("beyond" in compare(a, b)) == claims_say, (a, b)


def test_one_seed_makes_no_claim_of_how_often_a_2_se_call_is_chance() -> None:
    """With one seed there is no 2 SE call (compare says the spread is not measured); the line said "a 2 SE call is
    chance in about 5 % of comparisons" all the same."""
    from earful.study.report import _against_baseline

    one = _against_baseline({8.0: [0.5], 16.0: [0.6]}, [0.7], "scratch", "CER")
    assert "spread not measured) at 8, 16 s; best pre-trained (8 s) 50.0 %" in one and "chance" not in one
    three = _against_baseline({8.0: [0.5, 0.52, 0.54], 16.0: [0.6, 0.61, 0.63]}, [0.7, 0.71, 0.69], "scratch", "CER")
    assert "(with 3 seeds a side a 2 SE call is chance in about 12 % of comparisons)" in three


def test_the_chance_note_comes_with_a_2_se_call_only_and_a_lone_batch_size_has_it_too() -> None:
    """The note on how often a 2 SE call is chance followed the last comparison whatever its verdict ("equal",
    "not judged"), and a study of one batch size against a baseline had none."""
    from earful.study.report import _against_baseline, _neighbours

    close = {8.0: [0.50, 0.52, 0.48], 16.0: [0.51, 0.49, 0.50]}
    assert "chance" not in _neighbours(close, "CER")
    far = {8.0: [0.50, 0.52, 0.48], 16.0: [0.70, 0.72, 0.68]}
    assert _neighbours(far, "CER").endswith("(beyond 2 standard errors); with 3 seeds a side a 2 SE call is chance "
                                            "in about 12 % of comparisons")
    lone = _against_baseline({8.0: [0.50, 0.52, 0.48]}, [0.70, 0.72, 0.68], "scratch", "CER")
    assert lone.endswith("pre-trained is lower (beyond 2 standard errors) (with 3 seeds a side a 2 SE call is chance "
                         "in about 12 % of comparisons)")
