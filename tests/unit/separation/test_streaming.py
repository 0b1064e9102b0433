"""Streaming separation (msslab.separation.streaming): block by block equals offline, delayed by the stated latency.

The systems are tiny and randomly initialised (with random normalisation statistics, so
the masks vary strongly from frame to frame); the equality with offline separation holds
for any weights, and a softmax mask makes the estimates add up to the input, which the
impulse test uses to see the delay.
"""

from __future__ import annotations


import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio.functional as AF
from hydra import compose, initialize_config_dir

from msslab import CONFIG_DIR
from msslab.separation.inference import SeparationSettings, separate
from msslab.separation.streaming import Streamer, StreamingError
from msslab.system import build_system

CONF_DIR = CONFIG_DIR
TARGETS = ["vocals", "drums", "bass"]
RATE = 8000
TINY = ["logger=none", "paths.output_dir=unused", f"data.sample_rate={RATE}", "stft.n_fft=64", "stft.hop_length=16",
        "model.nb_layers=2", "model.hidden_size=16"]


def tiny_system(model: str = "lstm", wiener_iterations: int = 0, seed: int = 0, *extra: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[*TINY, f"model={model}", f"separation.wiener_iterations={wiener_iterations}",
                                          *extra])
    torch.manual_seed(seed)
    system = build_system(cfg, TARGETS, nb_channels=2, residual=False).eval()
    with torch.no_grad():  # as after training: statistics that are not the identity
        for module in system.model.modules():
            if isinstance(module, torch.nn.BatchNorm1d):
                module.running_mean.normal_()
                module.running_var.uniform_(0.2, 2.0)
        if hasattr(system.model, "input_mean"):
            system.model.input_mean.uniform_(0, 0.5)
            system.model.input_scale.uniform_(0.1, 1.0)
    return system


def causal_bsrnn(seed: int = 0):
    """A tiny band-split RNN (complex masks) with a causal RNN over time, its mask heads' last layer
    scaled up so that the masks are far from constant (at initialisation they are nearly so)."""
    system = tiny_system("bsrnn", 0, seed, "loss=bsrnn", "model.bidirectional=false", "model.bands=[500,1000,2000]",
                         "model.rnn_size=16", "model.mask_hidden=16")
    with torch.no_grad():
        for name, parameter in system.model.named_parameters():
            if parameter.dim() == 2:
                parameter.mul_(3)
    return system


def save_checkpoint(system, path):
    """What load_checkpoint reads from a checkpoint written by msslab-train."""
    torch.save({"state_dict": system.state_dict(), "msslab_config": system.config}, path)
    return path


@pytest.fixture(scope="module", params=["lstm", "gru"])
def system(request):
    return tiny_system(request.param)


def stream(streamer: Streamer, mixture: np.ndarray, block: int) -> np.ndarray:
    """``(targets, channels, samples + latency)``: every block's output, then the flush."""
    pieces = [streamer.process(mixture[:, i: i + block]) for i in range(0, mixture.shape[-1], block)]
    pieces.append(streamer.flush())
    return np.concatenate([np.stack([piece[t] for t in TARGETS]) for piece in pieces], axis=-1)


def offline(system, mixture: np.ndarray) -> np.ndarray:
    """What ``msslab-separate`` gives offline: one chunk here, zero-extended to n_fft when shorter."""
    with torch.no_grad():
        # as the stream separates: plain masks (the defaults filter, which is not causal)
        return separate(system, torch.from_numpy(mixture), SeparationSettings(wiener_iterations=0)).numpy()


@pytest.mark.parametrize("block, length", [(1, 300), (7, 2001), (16, 2001), (50, 2001), (333, 2001), (4000, 2001),
                                           (5, 40)])
def test_stream_equals_offline(system, block, length):
    """Any block size (one sample, not a multiple of the hop, longer than the file), a file shorter than n_fft."""
    mixture = np.random.default_rng(length + block).standard_normal((2, length)).astype(np.float32)
    streamer = Streamer(system)
    streamed = stream(streamer, mixture, block)
    latency = streamer.latency_samples
    assert streamed.shape == (len(TARGETS), 2, length + latency)
    assert np.all(streamed[..., :latency] == 0)
    np.testing.assert_allclose(streamed[..., latency:], offline(system, mixture), atol=1e-4, rtol=0)


def test_stream_equals_offline_separation_at_every_short_length(system):
    """Every length up to two windows: the stream equals what ``msslab-separate`` gives offline
    (``inference.separate``, which zero-extends inputs shorter than n_fft before its STFT).
    Lengths between n_fft / 2 and n_fft are the ones the stream once reflected unextended."""
    streamer = Streamer(system)
    latency, n_fft = streamer.latency_samples, streamer.n_fft
    rng = np.random.default_rng(9)
    for length in range(1, 2 * n_fft + 2):
        mixture = rng.standard_normal((2, length)).astype(np.float32)
        expected = offline(system, mixture)
        for block in sorted({1 + length // 3, length}):
            streamed = stream(streamer, mixture, block)
            assert streamed.shape == (len(TARGETS), 2, length + latency)
            np.testing.assert_allclose(streamed[..., latency:], expected, atol=1e-4, rtol=0,
                                       err_msg=f"length {length}, blocks of {block}")


def test_state_carried_across_calls(system):
    mixture = torch.randn(2, 1500)
    streamer = Streamer(system)
    whole = streamer.process(mixture)
    streamer.reset()
    first, second = streamer.process(mixture[:, :613]), streamer.process(mixture[:, 613:])
    for target in TARGETS:
        assert isinstance(whole[target], torch.Tensor)
        torch.testing.assert_close(torch.cat([first[target], second[target]], -1), whole[target], atol=1e-5, rtol=0)
    # The second half alone (fresh framing and RNN state) is not what the stream gives.
    fresh = Streamer(system).process(mixture[:, 613:])
    assert (fresh[TARGETS[0]][:, 700:] - second[TARGETS[0]][:, 700:]).abs().max() > 1e-3


def test_latency_is_the_measured_delay_of_an_impulse(system):
    streamer = Streamer(system)
    assert streamer.latency_samples == 63  # n_fft - 1
    assert streamer.latency_ms == pytest.approx(1000 * 63 / RATE)
    for block, position in [(1, 200), (5, 317)]:
        impulse = np.zeros((2, 700), dtype=np.float32)
        impulse[:, position] = 1
        # Softmax masks: the estimates add up to the (delayed) input, the impulse included.
        total = stream(streamer, impulse, block).sum(0)
        assert np.all(np.abs(total).argmax(-1) == position + streamer.latency_samples)
        assert total[0, position + streamer.latency_samples] == pytest.approx(1, abs=1e-4)


@pytest.mark.parametrize("block, length", [(1, 300), (7, 2001), (333, 2001), (5, 40)])
def test_complex_mask_stream_equals_offline(block, length):
    """``model=bsrnn model.bidirectional=false``: complex masks on the complex frames, streamed
    (the Streamer once fed magnitudes and multiplied real masks) equal the offline separation."""
    system = causal_bsrnn()
    mixture = np.random.default_rng(length + block).standard_normal((2, length)).astype(np.float32)
    streamer = Streamer(system.separator)
    streamed = stream(streamer, mixture, block)
    latency = streamer.latency_samples
    expected = offline(system, mixture)
    np.testing.assert_allclose(streamed[..., latency:], expected, atol=1e-4, rtol=0)
    # the masks are complex: the estimates are not the mixture scaled by real gains per bin
    mixture_spec = system.spectrogram(torch.from_numpy(mixture))
    estimate_spec = system.spectrogram(torch.from_numpy(expected))
    assert (estimate_spec / mixture_spec.unsqueeze(0)).angle().abs().max() > 0.5


def test_separate_streams_a_complex_mask_checkpoint(tmp_path):
    """``msslab-separate streaming=true`` with a causal BSRNN checkpoint writes the offline separation."""
    from msslab.cli.separate import separate as separate_command

    checkpoint = save_checkpoint(causal_bsrnn(), tmp_path / "bsrnn.ckpt")
    audio = (0.3 * np.random.default_rng(5).standard_normal((1501, 2))).astype(np.float32)
    sf.write(tmp_path / "song.wav", audio, RATE, subtype="FLOAT")
    for mode in ("true", "false"):
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose("separate", overrides=[f"ckpt={checkpoint}", f"input={tmp_path / 'song.wav'}",
                                                 f"output={tmp_path / mode}", f"streaming={mode}", "block_ms=3.1"])
        separate_command(cfg)
    for target in TARGETS:
        streamed, _ = sf.read(tmp_path / "true" / "song" / f"{target}.wav", dtype="float32")
        whole, _ = sf.read(tmp_path / "false" / "song" / f"{target}.wav", dtype="float32")
        assert streamed.shape == whole.shape == audio.shape and np.abs(whole).max() > 1e-2
        np.testing.assert_allclose(streamed, whole, atol=1e-4, rtol=0)


def test_refuses_what_cannot_stream():
    with pytest.raises(StreamingError, match="bidirectional.*future"):
        Streamer(tiny_system("blstm"))
    with pytest.raises(StreamingError, match="bidirectional.*future"):
        Streamer(tiny_system("bsrnn", 0, 0, "loss=bsrnn"))  # the default BSRNN sees the future
    with pytest.raises(StreamingError, match="wiener_iterations=1 is not causal"):
        Streamer(tiny_system("lstm", wiener_iterations=1))
    with pytest.raises(ValueError, match=r"channels=2"):
        Streamer(tiny_system("gru")).process(np.zeros((1, 10)))


def test_causal_wiener_filter():
    """Over a past context only: any block size gives the same, and the future does not change the past."""
    filtered = tiny_system("lstm", wiener_iterations=1)
    mixture = np.random.default_rng(5).standard_normal((2, 700)).astype(np.float32)
    outputs = [stream(Streamer(filtered, wiener_context_frames=4), mixture, block) for block in (7, 300)]
    np.testing.assert_allclose(outputs[0], outputs[1], atol=1e-5, rtol=0)
    changed = mixture.copy()
    changed[:, 400:] = 0
    after_change = stream(Streamer(filtered, wiener_context_frames=4), changed, 7)
    # The stream's sample s depends on the input up to s only (its output for earlier input is delayed).
    np.testing.assert_array_equal(after_change[..., :400], outputs[0][..., :400])
    assert np.abs(after_change[..., 500:] - outputs[0][..., 500:]).max() > 0.1
    plain = stream(Streamer(tiny_system("lstm")), mixture, 7)  # the same weights without the filter
    assert np.abs(plain - outputs[0]).max() > 1e-2
    # Wiener gains over all targets add up to one, as the softmax masks do.
    np.testing.assert_allclose(outputs[0].sum(0)[..., 63:], mixture, atol=1e-4, rtol=0)


def test_separate_refuses_a_bidirectional_checkpoint(tmp_path):
    from msslab.cli.separate import separate

    checkpoint = save_checkpoint(tiny_system("blstm"), tmp_path / "bidirectional.ckpt")
    sf.write(tmp_path / "song.wav", np.zeros((100, 2), dtype=np.float32), RATE)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("separate", overrides=[f"ckpt={checkpoint}", f"input={tmp_path / 'song.wav'}",
                                             f"output={tmp_path / 'out'}", "streaming=true"])
    with pytest.raises(StreamingError, match="bidirectional.*future"):
        separate(cfg)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.integration
def test_separate_streaming_writes_the_offline_separation(cli, tmp_path):
    """Stereo at another rate (resampled in blocks both ways) and mono at the model's rate, odd lengths."""
    causal = save_checkpoint(tiny_system("lstm"), tmp_path / "causal.ckpt")
    rng = np.random.default_rng(3)
    songs = {"stereo": ((0.3 * rng.standard_normal((3001, 2))).astype(np.float32), 11025),
             "mono": ((0.3 * rng.standard_normal((1234, 1))).astype(np.float32), RATE)}
    for name, (audio, rate) in songs.items():
        sf.write(tmp_path / f"{name}.wav", audio, rate, subtype="FLOAT")
    result = cli.run("msslab-separate", f"ckpt={causal}", f"input=[{tmp_path / 'stereo.wav'},{tmp_path / 'mono.wav'}]",
                     f"output={tmp_path / 'out'}", "streaming=true", "block_ms=2.3")
    assert result.returncode == 0, result.tail()

    system = tiny_system("lstm")
    for name, (audio, rate) in songs.items():
        mixture = torch.from_numpy(audio.T).mean(0, keepdim=True).expand(2, -1) if name == "mono" else torch.from_numpy(audio.T)
        expected = torch.from_numpy(offline(system, AF.resample(mixture, rate, RATE).numpy()))
        expected = AF.resample(expected, RATE, rate)
        expected = torch.nn.functional.pad(expected, (0, max(0, len(audio) - expected.shape[-1])))[..., : len(audio)]
        folder = tmp_path / "out" / name
        assert sorted(p.name for p in folder.iterdir()) == sorted(f"{t}.wav" for t in TARGETS)  # no partial files
        for target, estimate in zip(TARGETS, expected.numpy()):
            written, written_rate = sf.read(folder / f"{target}.wav", dtype="float32", always_2d=True)
            assert written_rate == rate and written.shape == audio.shape
            reference = estimate.mean(0, keepdims=True) if name == "mono" else estimate
            np.testing.assert_allclose(written.T, reference, atol=1e-4, rtol=0)


def test_resampler_in_blocks_equals_whole_signal():
    from msslab.separation.stream_files import StreamResampler

    x = torch.randn(2, 1001)
    for orig, new in [(11025, 8000), (8000, 44100)]:
        resampler = StreamResampler(orig, new, channels=2)
        blocks = [resampler.process(x[:, i: i + 37]) for i in range(0, x.shape[-1], 37)] + [resampler.finish()]
        torch.testing.assert_close(torch.cat(blocks, -1), AF.resample(x, orig, new), atol=1e-4, rtol=0)
