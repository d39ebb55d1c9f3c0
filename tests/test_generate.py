"""task=vae and task=gan: the models, the VAE's loss terms, the Fréchet distance against SciPy,
end-to-end runs on digits (metrics, plots, report, `kiln sample`, `kiln eval`), a GAN resumed
mid-epoch ending with the same weights and optimizer states, and the errors people will hit."""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_clean_error, interrupt_at
from PIL import Image

import kiln
from kiln import checkpoint
from kiln.cli import main
from kiln.data.registry import DataInfo
from kiln.engine.trainer import TrainingInterrupted
from kiln.models import create_model
from kiln.tasks.generate.frechet import feature_sums, frechet_distance, mean_cov
from kiln.tasks.generate.vae import VAETask, vae_terms


def info(channels: int, size: int) -> DataInfo:
    return DataInfo("x", [str(i) for i in range(10)], channels, size, size, [0.5] * channels,
                    [0.25] * channels)  # fmt: skip


# Models and losses --------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (1, 8, 8)])
def test_models_map_images_to_images(shape):
    c, h, w = shape
    x = torch.randn(5, c, h, w)
    vae = create_model("vae", info(c, h), latent=6)
    logits, mean, logvar = vae(x)
    assert logits.shape == x.shape and mean.shape == logvar.shape == (5, 6)
    gan = create_model("dcgan", info(c, h), latent=10, width=8)
    assert gan(x).shape == (5,)  # the discriminator's logits
    assert gan.generate(torch.randn(5, 10)).shape == x.shape
    dense = create_model("densegan", info(c, h), latent=10)  # the Keras tutorial's sizes
    assert dense(x).shape == (5,) and dense.generate(torch.randn(5, 10)).shape == x.shape
    widths = [m.out_features for m in dense.generator if isinstance(m, torch.nn.Linear)]
    assert widths == [256, 512, 1024, c * h * w]
    widths = [m.out_features for m in dense.discriminator if isinstance(m, torch.nn.Linear)]
    assert widths == [512, 256, 1]
    dense_vae = create_model("densevae", info(c, h), latent=6, hidden=[32, 16])
    logits, mean, logvar = dense_vae(x)
    assert logits.shape == x.shape and mean.shape == logvar.shape == (5, 6)
    widths = [m.out_features for m in dense_vae.modules() if isinstance(m, torch.nn.Linear)]
    assert widths == [32, 16, 12, 16, 32, c * h * w]  # pixels-32-16-(mean, logvar), mirrored
    for model in (vae, gan, dense, dense_vae):
        samples = model.eval().sample(7, generator=torch.Generator().manual_seed(0))
        assert samples.shape == (7, c, h, w)
        assert samples.min() >= 0 and samples.max() <= 1
        again = model.sample(7, generator=torch.Generator().manual_seed(0))
        assert torch.equal(samples, again)


def test_kl_of_the_prior_is_zero_and_terms_match_their_formulas():
    torch.manual_seed(0)
    pixels = torch.rand(4, 1, 8, 8)
    logits = torch.randn(4, 1, 8, 8)
    zeros = torch.zeros(4, 3)
    terms = vae_terms(logits, zeros, zeros, pixels)
    assert torch.equal(terms[:, 1], torch.zeros(4))  # q(z|x) = N(0, I): no KL
    p = torch.sigmoid(logits)
    reference = -(pixels * p.log() + (1 - pixels) * (1 - p).log()).flatten(1).sum(1)
    assert torch.allclose(terms[:, 0], reference, atol=1e-4)

    mean, logvar = torch.randn(4, 3), torch.randn(4, 3)
    posterior = torch.distributions.Normal(mean, (0.5 * logvar).exp())
    prior = torch.distributions.Normal(torch.zeros(3), torch.ones(3))
    kl = torch.distributions.kl_divergence(posterior, prior).sum(1)
    assert torch.allclose(vae_terms(logits, mean, logvar, pixels)[:, 1], kl, atol=1e-5)


def test_vae_summary_is_the_elbo_of_the_summed_terms():
    terms = torch.tensor([[30.0, 2.0], [40.0, 4.0]])
    values = VAETask.summarize(VAETask.score(terms, None), 2)
    assert values == pytest.approx({"elbo": -38.0, "recon": 35.0, "kl": 3.0})


def test_frechet_distance_matches_scipy():
    from scipy import linalg

    rng = np.random.default_rng(0)
    a = rng.normal(size=(500, 6)) @ rng.normal(size=(6, 6))
    b = rng.normal(1.0, 2.0, size=(400, 6)) @ rng.normal(size=(6, 6))
    ma, ca = a.mean(0), np.cov(a, rowvar=False)
    mb, cb = b.mean(0), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(ca @ cb).real
    expected = ((ma - mb) ** 2).sum() + np.trace(ca + cb - 2 * covmean)
    got = frechet_distance(*map(torch.tensor, (ma, ca, mb, cb)))
    assert got == pytest.approx(expected, rel=1e-6)
    assert frechet_distance(*map(torch.tensor, (ma, ca, ma, ca))) == pytest.approx(0, abs=1e-8)

    mean, cov = mean_cov(feature_sums(torch.tensor(a)), len(a))  # from sums, batch by batch
    halves = feature_sums(torch.tensor(a[:200])) + feature_sums(torch.tensor(a[200:]))
    assert np.allclose(mean.numpy(), ma) and np.allclose(cov.numpy(), ca)
    assert np.allclose(mean_cov(halves, len(a))[1].numpy(), ca)


# End to end on digits -------------------------------------------------------------------------
def config(tmp_path: Path, run: str, task: str, **model) -> dict:
    return {
        "task": task,
        "data": {"name": "digits", "batch_size": 32, "subset": 256},  # 8 steps per epoch
        "model": model,
        "train": {"epochs": 2, "device": "cpu", "seed": 3, "deterministic": True},
        "run": {"dir": str(tmp_path / "runs"), "name": run},
    }


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """A VAE, a classifier and a GAN scored by it, trained once for the tests below."""
    tmp = tmp_path_factory.mktemp("generate")
    kiln.train(config(tmp, "vae", "vae", name="vae", latent=4, width=8), progress=False)
    clf = config(tmp, "classifier", "classify", name="convnet", width=8, depth=2)
    kiln.train({**clf, "train": {**clf["train"], "epochs": 1}}, progress=False)
    kiln.train(gan_config(tmp, "gan"), progress=False)
    return tmp


def gan_config(tmp: Path, name: str) -> dict:
    cfg = config(tmp, name, "gan", name="dcgan", latent=8, width=8)
    cfg["optim"] = {"lr": 2e-4}
    cfg["sched"] = {"name": "none"}
    cfg["gan"] = {"frechet_classifier": str(tmp / "runs" / "classifier")}
    return cfg


def read_rows(run: Path) -> list[dict[str, float]]:
    with open(run / "metrics.csv", newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def test_vae_run_logs_the_terms_and_writes_plots_and_report(runs: Path):
    run = runs / "runs" / "vae"
    for row in read_rows(run):
        for split in ("train", "val"):
            elbo, recon, kl = (row[f"{split}_{k}"] for k in ("elbo", "recon", "kl"))
            assert recon > 0 and kl >= 0
            assert elbo == pytest.approx(-(recon + kl), rel=1e-5)
    for plot in ("curves", "samples", "reconstructions", "traversal"):
        assert (run / "plots" / f"{plot}.png").is_file(), plot
    page = (run / "report.html").read_text()
    assert "ELBO" in page and "Latent traversal" in page
    assert page.count("data:image/png;base64,") >= 4  # every figure inlined


def test_dense_vae_trains_under_task_vae(tmp_path: Path):
    """model=densevae (recipes/mnist-vae-fast.yaml's) is trained, scored and sampled by task=vae
    as the convolutional model=vae is."""
    run = kiln.train(config(tmp_path, "dense", "vae", name="densevae", hidden=[64], latent=4),
                     progress=False)  # fmt: skip
    rows = read_rows(run.path)
    assert rows[-1]["val_elbo"] > rows[0]["val_elbo"]  # it learns
    assert rows[-1]["val_elbo"] == pytest.approx(-(rows[-1]["val_recon"] + rows[-1]["val_kl"]),
                                                 rel=1e-5)  # fmt: skip
    test = json.loads((run.path / "eval-test.json").read_text())
    assert test["elbo"] < 0 and test["kl"] > 0
    assert (run.path / "plots" / "samples.png").is_file()


def test_gan_run_scores_with_the_classifier_and_keeps_both_optimizers(runs: Path):
    run = runs / "runs" / "gan"
    rows = read_rows(run)
    assert all(row["val_frechet"] > 0 and 0 < row["val_d_real"] < 1 for row in rows)
    assert [p.name for p in sorted((run / "plots").glob("samples_epoch_*.png"))] == [
        "samples_epoch_001.png", "samples_epoch_002.png"]  # fmt: skip
    assert (run / "plots" / "frechet.png").is_file()
    page = (run / "report.html").read_text()
    assert "Fréchet distance" in page and "classifier" in page and "not FID" in page
    state = checkpoint.load(run / "checkpoints" / "last.pt")
    model = state["model"]
    for name in ("generator", "discriminator"):
        opt = state["optimizers"][name]
        assert opt["param_groups"][0]["betas"] == (0.5, 0.999)
        params = [k for k in model if k.startswith(f"{name}.") and "running" not in k
                  and "num_batches" not in k]  # fmt: skip
        assert len(opt["state"]) == len(params)  # every parameter has its Adam moments
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tb"), size_guidance={"images": 0})
    events.Reload()
    assert "gan/fixed_noise" in events.Tags()["images"]
    assert "frechet/val" in events.Tags()["scalars"]


def test_gan_resumed_mid_epoch_ends_like_an_uninterrupted_run(runs: Path):
    cfg = gan_config(runs, "gan-interrupted")
    with pytest.raises(TrainingInterrupted):
        kiln.train(cfg, progress=False, callbacks=[interrupt_at(2, 3)])
    run = runs / "runs" / "gan-interrupted"
    kiln.train(resume=run, progress=False)
    done = checkpoint.load(run / "checkpoints" / "last.pt")
    straight = checkpoint.load(runs / "runs" / "gan" / "checkpoints" / "last.pt")
    for key, value in straight["model"].items():
        assert torch.equal(done["model"][key], value), key
    for name in ("generator", "discriminator"):
        for index, moments in straight["optimizers"][name]["state"].items():
            for k, v in moments.items():
                assert torch.equal(done["optimizers"][name]["state"][index][k], v), (name, index, k)
    assert [r["val_frechet"] for r in read_rows(run)] == [
        r["val_frechet"] for r in read_rows(runs / "runs" / "gan")
    ]


# The command line ----------------------------------------------------------------------------
def kiln_cli(capsys, *args) -> subprocess.CompletedProcess:
    """`kiln ARGS` in this process (no torch import to pay for again), as a finished process."""
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out, err)


def test_kiln_sample_writes_a_seeded_grid_or_single_images(runs: Path, tmp_path: Path, capsys):
    vae, gan = runs / "runs" / "vae", runs / "runs" / "gan"
    for name, seed in (("grid", 0), ("again", 0), ("seed", 1)):
        out = tmp_path / f"{name}.png"
        result = kiln_cli(capsys, "sample", vae, "--n", 16, "--seed", seed, "-o", out)
        assert result.returncode == 0, result.stderr
        assert str(out) in result.stdout
    grid = Image.open(tmp_path / "grid.png")
    assert grid.size == (4 * 10 + 2, 4 * 10 + 2)  # 4 x 4 digits of 8 pixels, 2 between
    assert (tmp_path / "grid.png").read_bytes() == (tmp_path / "again.png").read_bytes()
    assert (tmp_path / "grid.png").read_bytes() != (tmp_path / "seed.png").read_bytes()

    result = kiln_cli(capsys, "sample", gan, "--n", 5, "--checkpoint", "last", "-o",
                      f"{tmp_path}/each/")  # fmt: skip
    assert result.returncode == 0, result.stderr
    singles = sorted((tmp_path / "each").glob("*.png"))
    assert len(singles) == 5 and Image.open(singles[0]).size == (8, 8)


def test_kiln_eval_prints_the_test_elbo_and_kiln_report_rewrites_the_page(runs: Path, capsys):
    result = kiln_cli(capsys, "eval", runs / "runs" / "vae")
    assert result.returncode == 0, result.stderr
    saved = json.loads((runs / "runs" / "vae" / "eval-test.json").read_text())
    assert f"{saved['elbo']:.4f}" in result.stdout and "kl" in result.stdout
    page = runs / "runs" / "vae" / "report.html"
    page.unlink()
    result = kiln_cli(capsys, "report", runs / "runs" / "vae")
    assert result.returncode == 0, result.stderr
    assert f"{saved['elbo']:.4f}" in page.read_text()


def test_errors_say_what_to_do(runs: Path, tmp_path: Path, capsys):
    classifier, vae = runs / "runs" / "classifier", runs / "runs" / "vae"
    result = kiln_cli(capsys, "sample", classifier, "-o", tmp_path / "x.png")
    assert_clean_error(result, "task=classify", "task=vae or task=gan")
    result = kiln_cli(capsys, "sample", vae, "-o", tmp_path / "x.jpg")
    assert_clean_error(result, ".png", "folder")
    train = ("train", "data.subset=64", "epochs=1", f"run.dir={tmp_path}")
    missing = tmp_path.parent / "no-such-run"
    result = kiln_cli(capsys, *train, "task=gan", "model=dcgan",
                      f"gan.frechet_classifier={missing}")  # fmt: skip
    assert_clean_error(result, "gan.frechet_classifier", "no classifier run", str(missing))
    result = kiln_cli(capsys, *train, "task=gan", "model=dcgan", f"gan.frechet_classifier={vae}")
    assert_clean_error(result, "task=vae run, not a classifier")
    result = kiln_cli(capsys, *train, "task=vae", "model=convnet")
    assert_clean_error(result, "model=vae")
    result = kiln_cli(capsys, *train, "task=gan", "model=vae")
    assert_clean_error(result, "model=dcgan or model=densegan")
    result = kiln_cli(capsys, *train, "task=gan", "model=densegan", "data.subset=65", "batch=32",
                      f"gan.frechet_classifier={classifier}")  # fmt: skip
    assert_clean_error(
        result, "last batch of one image", "data.drop_last=true", "model.batchnorm=false"
    )
    assert not list(tmp_path.iterdir()), "a run that never started leaves no folder behind"


def test_gan_without_a_classifier_trains_one_says_so_and_reuses_it(tmp_path: Path, capsys):
    """gan.frechet_classifier unset (recipes/mnist-gan.yaml on a fresh clone): Kiln trains the
    classifier first, in one line, under RUN_DIR/.frechet/; the next GAN on the data reuses it."""
    train = ("train", "task=gan", "data.subset=64", "epochs=1", f"run.dir={tmp_path}",
             "train.device=cpu", "sched.name=none")  # fmt: skip
    first = kiln_cli(capsys, *train, "model=dcgan", "model.width=8", "model.latent=8")
    assert first.returncode == 0, first.stderr
    (cached,) = (tmp_path / ".frechet").iterdir()
    said = [line for line in first.stdout.splitlines() if "gan.frechet_classifier" in line]
    assert len(said) == 1 and "trains a small classifier on digits" in said[0], first.stdout
    assert str(cached) in said[0] and (cached / "checkpoints" / "best.pt").is_file()
    run = tmp_path / "digits-dcgan"
    assert (run / "plots" / "frechet.png").is_file()  # the Fréchet curve
    test = json.loads((run / "eval-test.json").read_text())
    assert test["classifier"] == str(cached) and test["frechet"] > 0

    second = kiln_cli(capsys, *train, "model=densegan", "model.latent=8")
    assert second.returncode == 0, second.stderr
    assert f"classifier Kiln trained on digits before, {cached}" in second.stdout
    assert list((tmp_path / ".frechet").iterdir()) == [cached]  # reused, not trained again
    assert read_rows(tmp_path / "digits-densegan")[0]["val_frechet"] > 0
