"""The AdvCAM speed benchmark's bare passes (``benchmarks/advcam_speed.py``): the network passes
the batched AdvCAM runs, batch for batch, and nothing else."""

from __future__ import annotations

import pytest
import torch
from helpers import load_benchmark

from wsss.attribution.advcam import AdvCamConfig, compute_advcam_batch
from wsss.models.cam_net import CamNet

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def speed():
    yield from load_benchmark("advcam_speed")


# images with 1, 2, 3 classes; 3 steps at scales 0.5 and 1.0. Batch sizes per forward: all 6 trajectories'
# flip pairs at once; or 2 images per batch (3 trajectories, then 3) at most 2 pairs per forward
# (24 px: 12 x 12 at scale 0.5, climbed first, then 24 x 24)
@pytest.mark.parametrize("settings, sizes, widths", [
    ({"images_per_batch": 3}, [12] * 6, [12] * 3 + [24] * 3),
    ({"images_per_batch": 2, "max_batch_pairs": 2}, ([4] * 3 + [2] * 3) * 4, ([12] * 6 + [24] * 6) * 2),
])
def test_bare_passes_feed_the_network_the_batched_versions_batches(speed, monkeypatch, settings, sizes,
                                                                   widths) -> None:
    torch.manual_seed(0)
    net = speed.benchmark_net(None, 4)
    net.eval()
    images = speed.build_images(24, 3, net.num_classes, seed=0, data=None)
    assert [len(keys) for _, keys in images] == [1, 2, 3]
    config = AdvCamConfig(iterations=3, scales=(1.0, 0.5), **settings)
    calls: list[tuple] = []
    class_maps = CamNet.class_maps

    def recording(self, x, *args, **kwargs):
        calls.append((tuple(x.shape), x.is_contiguous(memory_format=torch.channels_last), x.requires_grad))
        return class_maps(self, x, *args, **kwargs)

    monkeypatch.setattr(CamNet, "class_maps", recording)
    per_batch = config.images_per_batch
    for start in range(0, len(images), per_batch):
        group = images[start:start + per_batch]
        compute_advcam_batch(net, [image for image, _ in group], [keys for _, keys in group], config=config)
    batched, calls[:] = list(calls), []
    speed.bare_passes(net, images, config)
    assert calls == batched
    assert [shape[0] for shape, _, _ in batched] == sizes
    assert [shape[-1] for shape, _, _ in batched] == widths
    # each climb's last step without gradient, every input channels-last
    assert [grad for _, _, grad in batched] == [True, True, False] * (len(sizes) // 3)
    assert all(layout for _, layout, _ in batched)
