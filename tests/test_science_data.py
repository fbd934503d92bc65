"""Datasets: shapes, the targets they promise, and the user's own files checked on load."""
import numpy as np
import pytest

from fpdsl import spectral
from fpdsl.data import SineSum, Digits, File, Image2D, Rahaman
from fpdsl.errors import ConfigError


def test_rahaman_sines_on_a_periodic_grid():
    d = Rahaman(amplitudes="rising", seed=1)
    assert d.x.shape == (200, 1) and d.y.shape == (200, 1) and d.uniform
    np.testing.assert_allclose(d.amplitudes, np.arange(1, 11) / 10)
    np.testing.assert_allclose(d.x[:, 0], np.arange(200) / 200)
    # exact DFT bins: |ŷ_k| = n A / 2 at k = 5, 10, ..., 50 and nothing elsewhere
    c = np.abs(spectral.dft(d.y[:, 0]))
    np.testing.assert_allclose(c[d.frequencies.astype(int)], 100 * d.amplitudes, rtol=1e-9)
    others = np.setdiff1d(np.arange(c.size), d.frequencies.astype(int))
    assert c[others].max() < 1e-9
    assert not np.allclose(Rahaman(seed=2).phases, Rahaman(seed=1).phases)  # seeded phases


def test_rahaman_rejects_unresolvable_frequencies_and_bad_amplitudes():
    with pytest.raises(ConfigError, match="dataset.n_points"):
        Rahaman(frequencies=[5, 60], n_points=100)
    with pytest.raises(ConfigError, match="dataset.amplitudes"):
        Rahaman(frequencies=[5, 10], amplitudes=[1.0])


def test_condense5d_is_the_papers_target():
    d = SineSum()
    assert d.x.shape == (80, 5) and d.y.shape == (80, 1) and not d.uniform
    assert d.x.min() >= -4 and d.x.max() <= 2
    np.testing.assert_allclose(d.y[:, 0], (3.5 * np.sin(5 * d.x + 1)).sum(1))


def test_digits_from_the_package():
    d = Digits()
    assert d.x.shape == (1797, 64) and d.y.shape == (1797, 10)
    assert d.x.min() == 0 and d.x.max() == 1
    np.testing.assert_array_equal(d.y.sum(1), 1)
    np.testing.assert_array_equal(d.y.argmax(1), d.labels)
    sub = Digits(n_samples=100, seed=3)
    assert sub.x.shape == (100, 64)
    with pytest.raises(ConfigError, match="dataset.n_samples"):
        Digits(n_samples=5000)


@pytest.mark.parametrize("image", ["zoneplate", "rings", "china", "flower"])
def test_image2d(image):
    d = Image2D(image=image, size=16)
    assert d.x.shape == (256, 2) and d.y.shape == (256, 1)
    assert d.x.min() == 0 and d.x.max() == 15 / 16
    assert 0 <= d.y.min() and d.y.max() <= 1 and d.y.std() > 0.05


def test_file_npz_and_csv(tmp_path):
    x = np.linspace(-1, 1, 9)
    np.savez(tmp_path / "d.npz", inputs=x, targets=np.stack([x**2, x], 1))
    d = File(str(tmp_path / "d.npz"), x="inputs", y="targets")
    assert d.x.shape == (9, 1) and d.y.shape == (9, 2) and d.uniform
    (tmp_path / "d.csv").write_text("a,b,t\n" + "".join(f"{i},{i * i},{2 * i}\n" for i in range(5)))
    d = File(str(tmp_path / "d.csv"), x=["a", "b"], y="t")
    assert d.x.shape == (5, 2) and not d.uniform
    np.testing.assert_array_equal(d.y[:, 0], [0, 2, 4, 6, 8])
    d = File(str(tmp_path / "d.csv"), x="a", y="t")
    assert d.uniform


def test_file_rejects_bad_data_with_a_clear_error(tmp_path):
    np.savez(tmp_path / "nan.npz", x=np.arange(4.0), y=np.array([0, np.nan, 1, 2]))
    np.savez(tmp_path / "rows.npz", x=np.arange(4.0), y=np.arange(3.0))
    np.savez(tmp_path / "3d.npz", x=np.zeros((4, 2, 2)), y=np.arange(4.0))
    np.savez(tmp_path / "str.npz", x=np.array(["a", "b"]), y=np.arange(2.0))
    (tmp_path / "bad.csv").write_text("x,y\n1,2\n3,oops\n")
    (tmp_path / "d.txt").write_text("1 2\n")
    cases = [
        (dict(path=str(tmp_path / "missing.npz")), "dataset.path: no file"),
        (dict(path=None), "dataset.path: not set"),
        (dict(path=str(tmp_path / "d.txt")), "neither .npz nor .csv"),
        (dict(path=str(tmp_path / "nan.npz")), "dataset.y: nan.npz has 1 NaN or infinite value"),
        (dict(path=str(tmp_path / "rows.npz")), "4 rows of x but 3 rows of y"),
        (dict(path=str(tmp_path / "3d.npz")), r"dataset.x: 3d.npz has x of shape \(4, 2, 2\)"),
        (dict(path=str(tmp_path / "str.npz")), "numbers are needed"),
        (dict(path=str(tmp_path / "nan.npz"), x="inputs"), r"no array named 'inputs'; it holds \['x', 'y'\]"),
        (dict(path=str(tmp_path / "bad.csv")), "row 3 column 'y' is 'oops', not a number"),
        (dict(path=str(tmp_path / "bad.csv"), y="z"), r"dataset.y: bad.csv has no column 'z'"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ConfigError, match=message):
            File(**kwargs)
