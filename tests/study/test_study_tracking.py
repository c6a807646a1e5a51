"""A study's runs, pre-trainings and fine-tunings alike, are grouped in its trackers under the study's name."""

import json


def test_a_studys_runs_share_one_experiment_named_after_it(cluster_study_local, monkeypatch) -> None:
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow's file store is in maintenance mode
    client = MlflowClient((cluster_study_local / "tracking" / "mlruns").as_uri())
    experiment = client.get_experiment_by_name("toy-slurm")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert set(runs) == {"4s-seed1", "4s-seed1__final__10h"}
    assert all(r.info.status == "FINISHED" and r.data.tags["group"] == "toy-slurm" for r in runs.values())
    fine = runs["4s-seed1__final__10h"]
    valid = (cluster_study_local / "finetune" / "4s-seed1__final__10h" / "valid.jsonl").read_text().splitlines()
    valid = json.loads(valid[-1])
    assert fine.data.metrics["valid/wer"] == valid["wer"] and fine.data.params["max_steps"] == "2"
    assert runs["4s-seed1"].data.params["batch_seconds"] == "4.0"
