"""MUSDB18 as released: ``ROOT/{train,test}/<track>.stem.mp4``, one AAC stream per stem.

Stream order, source names and the official validation tracks come from the ``musdb``
package's own dataset description; headers are read with ``stempeg.Info`` (ffprobe).

Decoding: ``stempeg.read_stems`` (what ``musdb``'s ``chunk_start``/``chunk_duration``
use) starts one ffmpeg per stream and seeks on the output side, so ffmpeg decodes from
the start of the file up to the chunk: 0.4 s for a 3 s chunk at the start of a 4-minute
track, 1 s near its end. Decoding whole tracks once and caching them costs about 340 MB
per track (4 stereo stems, float32), far beyond memory for 150 tracks. So a chunk is
decoded here by one ffmpeg process that seeks in the input (cheap in MP4) and merges
the four source streams: about 0.07 s per chunk wherever it is. AAC frames overlap, so
the seek starts :data:`PREROLL_SECONDS` early and those samples are dropped; the chunk
then equals the same samples of a whole-file decode.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np

from .audio import AudioInfo, BadAudio
from .filetracks import BadTrack, FileTracks, Track, musdb_setup
from .tracks import DataError

SUFFIX = ".stem.mp4"
PREROLL_SECONDS = 0.1  # > 2 AAC frames (2 x 1024 samples at 44.1 kHz): the decoder state is settled after it
TAIL_SECONDS = 0.5  # decoded at the end of every file up front, to catch truncated files
# Headers and decoders may disagree on a stream's length by a few samples; fewer missing
# samples than this at the very end are padded with silence, more are a truncated file.
END_TOLERANCE_SECONDS = 0.05


def _ffmpeg_message(err: Exception) -> str:
    stderr = getattr(err, "stderr", None)
    if isinstance(stderr, bytes):
        stderr = stderr.decode(errors="replace")
    lines = [line for line in (stderr or str(err)).splitlines() if line.strip()]
    return lines[-1].strip() if lines else type(err).__name__


class MusdbTracks(FileTracks):
    """One split of MUSDB18 (``.stem.mp4``), read chunk by chunk with ffmpeg.

    Takes :class:`~msslab.data.filetracks.FileTracks`'s arguments; the sources are
    MUSDB18's ``vocals, drums, bass, other``.
    """

    layout = "ROOT/{train,test}/<track>.stem.mp4"

    def __init__(self, root: str, split: str, sample_rate: int, **kwargs):
        setup = musdb_setup()
        self.stem_ids = {str(k): int(v) for k, v in setup["stem_ids"].items()}
        super().__init__(root, split, sample_rate, [str(s) for s in setup["sources"]], **kwargs)

    def prepare(self) -> None:
        missing = [tool for tool in ("ffmpeg", "ffprobe") if shutil.which(tool) is None]
        if missing:
            raise DataError(f"data=musdb18 decodes .stem.mp4 files with ffmpeg, but {' and '.join(missing)} "
                            f"{'are' if len(missing) > 1 else 'is'} not on PATH: install ffmpeg (Debian/Ubuntu: apt-get install ffmpeg), "
                            "or use the wav release with data=musdb18hq")
        super().prepare()

    def list_tracks(self, folder: Path) -> list[str]:
        return sorted(p.name[: -len(SUFFIX)] for p in folder.iterdir()
                      if p.is_file() and p.name.endswith(SUFFIX) and not p.name.startswith("."))

    def track_path(self, folder: Path, name: str) -> Path:
        return folder / f"{name}{SUFFIX}"

    def scan_track(self, folder, name):
        import stempeg  # lazy: needs ffmpeg at import, which prepare() checks first

        path = self.track_path(folder, name)
        try:
            info = stempeg.Info(str(path))
        except Exception as err:  # ffprobe's error, whatever wraps it
            raise BadAudio(str(path), f"unreadable stem file (ffprobe: {_ffmpeg_message(err)})") from None
        needed = max(self.stem_ids.values()) + 1
        if info.nb_audio_streams < needed:
            raise BadAudio(str(path), f"has {info.nb_audio_streams} audio stream(s); a MUSDB18 .stem.mp4 has {needed} "
                                      f"({', '.join(sorted(self.stem_ids, key=self.stem_ids.get))})")
        files = {}
        for stem, k in sorted(self.stem_ids.items(), key=lambda item: item[1]):
            stream = info.audio_streams[k]
            rate = int(stream["sample_rate"])
            frames = int(stream["duration_ts"]) if "duration_ts" in stream else int(round(float(stream["duration"]) * rate))
            files[stem] = AudioInfo(f"{path} (stream {k}: {stem})", rate, frames, int(stream["channels"]))
        return files, {s: (str(path), self.stem_ids[s]) for s in self.sources}

    def check_track(self, track: Track) -> None:
        # The header of a truncated MP4 still promises every sample: decode the end to know.
        stop = track.start + track.frames
        try:
            self.read(track, max(track.start, stop - int(TAIL_SECONDS * track.sample_rate)), stop)
        except BadAudio as bad:
            raise BadTrack([str(bad)]) from None

    def read(self, track: Track, start: int, stop: int) -> dict[str, np.ndarray]:
        path = track.parts[self.sources[0]][0]
        streams = [track.parts[s][1] for s in self.sources]
        channels = [track.files[s].channels for s in self.sources]
        rate = track.sample_rate
        preroll = min(start, int(PREROLL_SECONDS * rate))
        cmd = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error"]
        if start - preroll > 0:
            cmd += ["-ss", f"{(start - preroll) / rate:.6f}"]
        cmd += ["-i", path, "-t", f"{(stop - start + preroll) / rate + END_TOLERANCE_SECONDS:.6f}"]
        if len(streams) == 1:
            cmd += ["-map", f"0:a:{streams[0]}"]
        else:
            cmd += ["-filter_complex", "".join(f"[0:a:{k}]" for k in streams) + f"amerge=inputs={len(streams)}"]
        cmd += ["-f", "f32le", "-acodec", "pcm_f32le", "pipe:1"]
        result = subprocess.run(cmd, capture_output=True)
        if result.returncode != 0:
            raise BadAudio(path, f"ffmpeg cannot decode samples {start}..{stop} ({_ffmpeg_message(result)})")
        audio = np.frombuffer(result.stdout, dtype="<f4").reshape(-1, sum(channels))[preroll:]
        need = stop - start
        if len(audio) < need:
            short = need - len(audio)
            end = min(track.files[s].frames for s in self.sources)
            if short > END_TOLERANCE_SECONDS * rate or stop < end - END_TOLERANCE_SECONDS * rate:
                raise BadAudio(path, f"truncated or corrupt stem file: decoding samples {start}..{stop} "
                                     f"({start / rate:.2f}..{stop / rate:.2f} s) gave only {len(audio)}")
            audio = np.concatenate([audio, np.zeros((short, audio.shape[1]), dtype=audio.dtype)])
        audio = audio[:need].T
        bounds = np.cumsum([0] + channels)
        return {s: np.ascontiguousarray(audio[bounds[i] : bounds[i + 1]]) for i, s in enumerate(self.sources)}

