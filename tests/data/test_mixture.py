"""mixture.py: the capped mixture's probabilities, epochs and provenance."""

import pickle

import numpy as np

from usjepa_jax.data import mixture


class Range:
    def __init__(self, name, n):
        self.name, self.n = name, n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {"image": np.zeros((2, 2), np.uint8), "scan_mask": np.ones((2, 2), bool), "label": np.int32(-1),
                "index": np.int32(i), "dataset": self.name, "local": i}

    def provenance(self, i):
        return {"dataset": self.name, "file": f"{i}", "frame": 0}


def test_mixture_probabilities_and_cap():
    sizes = [10, 100, 1000]
    assert np.allclose(mixture.mixture_weights(sizes, cap=50), np.array([10, 50, 50]) / 110)
    assert np.allclose(mixture.mixture_weights(sizes, cap=None), np.array(sizes) / 1110)
    assert np.allclose(mixture.mixture_weights([10, 200_000]), np.array([10, 50_000]) / 50_010)  # N_t default
    mix = mixture.MixtureSource([Range(f"d{i}", n) for i, n in enumerate(sizes)], cap=50, epochs=20, seed=1)
    assert mix.epoch_length == 110 and len(mix) == 2200
    per_epoch = [[mix[e * 110 + k]["dataset"] for k in range(110)] for e in range(20)]
    for names in per_epoch:
        assert [names.count(f"d{i}") for i in range(3)] == [10, 50, 50]
    # A capped dataset: distinct frames within an epoch, fresh subsets across epochs, all frames over 20 epochs.
    seen = [[mix[e * 110 + 60 + k]["local"] for k in range(50)] for e in range(20)]
    assert all(len(set(s)) == 50 for s in seen) and set(seen[0]) != set(seen[1])
    assert set().union(*map(set, seen)) == set(range(1000))
    again = pickle.loads(pickle.dumps(mix))
    assert [again[k]["local"] for k in range(0, 2200, 37)] == [mix[k]["local"] for k in range(0, 2200, 37)]
    assert mix[1234]["index"] == 1234 and mix.provenance(0)["dataset"] == "d0"
