"""The MIDI composer of ``data=rendered``: a song from a seed, as General MIDI parts per stem.

Each song has a tempo, a key (major or minor), a form (intro, verses, choruses, a
bridge; 4- or 8-bar sections, each type with its own chord progression, drum
groove and melody, repeated where the form repeats it) and four stems:

- ``vocals``: a lead melody on a voice-like General MIDI program (choir, voice,
  synth voice, saxophone, flute, ...), phrased with rests, chord tones on strong beats;
- ``drums``: a GM drum kit (standard, room, power, electronic, 808, jazz, brush) playing
  a section groove with ghost notes, a fill at the end of every section and a crash after it;
- ``bass``: a GM bass program on roots, fifths, octaves and approach notes;
- ``other``: two or three parts from the keys, guitars, strings, pads and brass
  families (comping, arpeggios, sustained chords, stabs), each on its own program.

Every part is placed in the stereo field (MIDI pan); :func:`write_midi` writes a
stem's parts as a MIDI file (``mido``) with humanised onsets. Rendering the files
to audio is :mod:`msslab.data.fluidsynth`'s job.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import mido
import numpy as np

SOURCES = ["vocals", "drums", "bass", "other"]
TICKS_PER_BEAT = 480
DRUM_CHANNEL = 9

# General MIDI programs (0-based) per stem family.
LEAD_PROGRAMS = [52, 53, 54, 85, 65, 66, 71, 73, 81]  # choir aahs, voice oohs, synth voice, voice lead, sax, clarinet, flute, saw lead
BASS_PROGRAMS = [32, 33, 34, 35, 36, 38, 39]  # acoustic, finger, pick, fretless, slap, synth basses
DRUM_KITS = [0, 8, 16, 24, 25, 32, 40]  # standard, room, power, electronic, TR-808, jazz, brush (bank 128)
OTHER_FAMILIES = {
    "keys": [0, 1, 2, 4, 5, 16, 17],  # pianos, electric pianos, organs
    "guitar": [24, 25, 26, 27, 28, 29, 30],  # nylon, steel, jazz, clean, muted, overdriven, distortion
    "strings": [48, 49, 50, 44],  # ensembles, synth strings, tremolo
    "pad": [88, 89, 90, 91, 94, 95],
    "brass": [61, 62, 63, 56],  # brass section, synth brass, trumpet
}
# Drum notes (GM percussion map).
KICK, SNARE, SIDESTICK, CLAP, HAT, PEDAL_HAT, OPEN_HAT, CRASH, RIDE = 36, 38, 37, 39, 42, 44, 46, 49, 51
TOMS = [50, 48, 47, 45, 43, 41]  # high to low

MAJOR = [0, 2, 4, 5, 7, 9, 11]
MINOR = [0, 2, 3, 5, 7, 8, 10]
# Progressions as scale degrees (0 = tonic), one chord per bar.
PROGRESSIONS = [(0, 4, 5, 3), (5, 3, 0, 4), (0, 5, 3, 4), (1, 4, 0, 5), (0, 3, 4, 3), (0, 3, 0, 4),
                (5, 4, 3, 4), (0, 2, 3, 4), (3, 0, 4, 5), (0, 6, 5, 4)]
FORM = ["intro", "verse", "chorus", "verse", "chorus", "bridge", "chorus", "outro"]


@dataclass
class Note:
    beat: float  # onset in beats from the song start
    length: float  # beats
    pitch: int  # MIDI note
    velocity: int


@dataclass
class Part:
    """One instrument of a stem: a GM program on a channel, panned, with its notes."""

    program: int
    channel: int
    pan: int  # MIDI CC10, 0 (left) .. 127 (right)
    notes: list[Note]


@dataclass
class Section:
    kind: str
    bar: int  # first bar
    bars: int


class Song:
    """The score of one song: tempo, key, form and the parts of every stem (in beats)."""

    def __init__(self, seed: int, seconds: float):
        rng = np.random.default_rng(seed)
        self.rng = rng
        self.bpm = float(rng.uniform(78, 150))
        self.tonic = int(rng.integers(0, 12))
        self.scale = MAJOR if rng.random() < 0.6 else MINOR
        nb_bars = int(np.ceil(seconds * self.bpm / 60.0 / 4.0)) + 1  # +1: the render is cut to length
        self.sections = self._form(nb_bars)
        self.progressions = {kind: PROGRESSIONS[int(rng.integers(len(PROGRESSIONS)))] for kind in FORM}
        self.chords = [self.progressions[s.kind][b % 4] for s in self.sections for b in range(s.bars)]
        self.swing = float(rng.choice([0.0, 0.0, 0.08, 0.16]))  # delay of off-beat eighths, in beats
        self.parts = {"vocals": [self._vocals()], "drums": [self._drums()], "bass": [self._bass()],
                      "other": self._other()}

    # ------------------------------------------------------------------------------ harmony
    def _form(self, nb_bars: int) -> list[Section]:
        # Short songs start anywhere in the form but the intro, so the voice is heard.
        start = 0 if nb_bars >= 12 else int(self.rng.integers(1, len(FORM) - 1))
        sections, bar, i = [], 0, start
        while bar < nb_bars:
            kind = FORM[i % len(FORM)]
            bars = 2 if kind in ("intro", "outro") else int(self.rng.choice([4, 8]))
            sections.append(Section(kind, bar, bars))
            bar, i = bar + bars, i + 1
        return sections

    def degree_pitch(self, degree: int, octave: int) -> int:
        """MIDI note of scale ``degree`` (any integer), ``octave`` as in C4 = 60 -> 4."""
        return 12 * (octave + 1) + self.tonic + self.scale[degree % 7] + 12 * (degree // 7)

    def chord(self, bar: int, octave: int, size: int = 3) -> list[int]:
        degree = self.chords[min(bar, len(self.chords) - 1)]
        return [self.degree_pitch(degree + 2 * k, octave) for k in range(size)]

    def section_of(self, bar: int) -> Section:
        return next(s for s in reversed(self.sections) if s.bar <= bar)

    @property
    def nb_bars(self) -> int:
        return len(self.chords)

    def _velocity(self, base: float, spread: float = 10.0) -> int:
        return int(np.clip(round(base + self.rng.normal(0, spread)), 1, 127))

    def _swung(self, beat: float) -> float:
        return beat + self.swing if abs(beat * 2 - round(beat * 2)) < 1e-6 and round(beat * 2) % 2 == 1 else beat

    # ------------------------------------------------------------------------------- stems
    def _vocals(self) -> Part:
        """A melody per section kind (repeated where the form repeats), phrased in two-bar lines."""
        rng, motifs, notes = self.rng, {}, []
        low = int(rng.integers(3, 5))  # octave of the melody's floor
        for section in self.sections:
            if section.kind == "intro":
                continue
            if section.kind not in motifs:
                motifs[section.kind] = self._melody(section.bars, low)
            for note in motifs[section.kind]:
                bar = section.bar + int(note.beat // 4)
                if bar >= self.nb_bars:
                    continue
                # Re-harmonise: snap a strong-beat note to the nearest tone of this bar's chord.
                pitch = note.pitch
                if note.beat % 2 == 0:
                    tones = [p + 12 * o for p in self.chord(bar, low) for o in (-1, 0, 1)]
                    pitch = min(tones, key=lambda t: abs(t - pitch))
                notes.append(Note(section.bar * 4 + note.beat, note.length, pitch, self._velocity(note.velocity, 6)))
        return Part(int(rng.choice(LEAD_PROGRAMS)), 0, int(rng.integers(56, 73)), notes)

    def _melody(self, bars: int, octave: int) -> list[Note]:
        rng, notes = self.rng, []
        degree = int(rng.integers(0, 5))
        for phrase in range(0, bars, 2):
            beat = float(rng.choice([0.0, 0.5, 1.0]))
            end = phrase * 4 + float(rng.choice([6.0, 7.0, 7.5]))  # a breath before the next line
            beat += phrase * 4
            while beat < end:
                length = float(rng.choice([0.5, 0.5, 1.0, 1.0, 1.5, 2.0]))
                length = min(length, end - beat)
                degree = int(np.clip(degree + rng.choice([-2, -1, -1, 0, 1, 1, 2, 3]), 0, 11))
                notes.append(Note(beat, length * 0.92, self.degree_pitch(degree, octave), 92))
                beat += length
        return notes

    def _drums(self) -> Part:
        rng, notes = self.rng, []
        grooves = {}
        for section in self.sections:
            if section.kind not in grooves:
                grooves[section.kind] = self._groove(section.kind)
            kick, snare, hat, hat_note = grooves[section.kind]
            for b in range(section.bars):
                bar = section.bar + b
                fill = b == section.bars - 1 and section.kind != "outro"
                for step in range(16):
                    beat = bar * 4 + step / 4
                    if fill and step >= 8 + 4 * int(rng.integers(0, 2)):
                        # Fill: sixteenths down the toms (and snare), louder towards the end.
                        drum = SNARE if rng.random() < 0.3 else TOMS[min(len(TOMS) - 1, (step - 8) * len(TOMS) // 8)]
                        if rng.random() < 0.85:
                            notes.append(Note(beat, 0.25, drum, self._velocity(80 + 3 * (step - 8))))
                        continue
                    if step in kick:
                        notes.append(Note(beat, 0.25, KICK, self._velocity(100)))
                    if step in snare:
                        notes.append(Note(beat, 0.25, snare[step], self._velocity(98)))
                    elif step % 2 and rng.random() < 0.08:  # ghost note
                        notes.append(Note(beat, 0.25, SNARE, self._velocity(35, 6)))
                    if step in hat:
                        accent = 14 if step % 4 == 0 else 0
                        notes.append(Note(beat, 0.25, hat_note, self._velocity(62 + accent)))
                if b == 0 and section.bar > 0:
                    notes.append(Note(bar * 4, 2.0, CRASH, self._velocity(100)))
        for note in notes:
            note.beat = self._swung(note.beat)
        return Part(int(rng.choice(DRUM_KITS)), DRUM_CHANNEL, int(rng.integers(54, 75)), notes)

    def _groove(self, kind: str):
        """``(kick steps, {snare step: note}, hat steps, hat note)`` on a sixteenth grid."""
        rng = self.rng
        kick = {0, 8} | {s for s in (3, 6, 10, 11, 14) if rng.random() < 0.3}
        backbeat = CLAP if rng.random() < 0.15 else (SIDESTICK if kind in ("intro", "bridge") and rng.random() < 0.5 else SNARE)
        snare = {4: backbeat, 12: backbeat}
        if rng.random() < 0.2:  # half-time feel
            snare = {8: backbeat}
        every = int(rng.choice([1, 2, 2, 4]))
        hat = set(range(0, 16, every))
        hat_note = RIDE if kind == "chorus" and rng.random() < 0.4 else (OPEN_HAT if every == 4 and rng.random() < 0.3 else HAT)
        if kind == "intro":
            kick, hat = {0}, set(range(0, 16, 4))
        return kick, snare, hat, hat_note

    def _bass(self) -> Part:
        rng, notes = self.rng, []
        styles = {}
        for bar in range(self.nb_bars):
            kind = self.section_of(bar).kind
            style = styles.setdefault(kind, str(rng.choice(["whole", "half", "eighths", "root_fifth", "walking", "syncopated"])))
            root = self.chord(bar, 1)[0]
            root = root - 12 if root > 40 else root  # E1..E2
            fifth = root + 7
            next_root = self.chord(bar + 1, 1)[0]
            if style == "whole":
                pattern = [(0, 3.8, root)]
            elif style == "half":
                pattern = [(0, 1.9, root), (2, 1.9, root if rng.random() < 0.6 else fifth)]
            elif style == "eighths":
                pattern = [(i / 2, 0.45, root + (12 if i == 7 and rng.random() < 0.3 else 0)) for i in range(8)]
            elif style == "root_fifth":
                pattern = [(0, 0.9, root), (1, 0.9, fifth), (2, 0.9, root + 12), (3, 0.9, fifth)]
            elif style == "walking":
                approach = next_root - 12 + 11 if next_root - 12 + 11 < 48 else next_root - 1
                pattern = [(0, 0.9, root), (1, 0.9, root + 4 if self.scale is MAJOR else root + 3),
                           (2, 0.9, fifth), (3, 0.9, approach)]
            else:
                pattern = [(0, 0.7, root), (0.75, 0.7, root), (1.5, 0.45, fifth), (2.5, 0.9, root), (3.5, 0.4, root + 12)]
            for beat, length, pitch in pattern:
                notes.append(Note(self._swung(bar * 4 + beat), length, int(pitch), self._velocity(92)))
        return Part(int(rng.choice(BASS_PROGRAMS)), 0, int(rng.integers(58, 71)), notes)

    def _other(self) -> list[Part]:
        rng = self.rng
        families = list(rng.choice(list(OTHER_FAMILIES), size=int(rng.integers(2, 4)), replace=False))
        pans = rng.permutation(np.linspace(24, 104, len(families)).round().astype(int))
        parts = []
        for channel, (family, pan) in enumerate(zip(families, pans)):
            program = int(rng.choice(OTHER_FAMILIES[family]))
            notes = {"keys": self._comp, "guitar": self._arpeggio, "strings": self._sustain,
                     "pad": self._sustain, "brass": self._stabs}[family]()
            parts.append(Part(program, channel, int(pan), notes))
        return parts

    def _comp(self) -> list[Note]:
        """Chords on a per-song rhythm (keys)."""
        rhythm = [(0, 1.5), (1.5, 1.0), (2.5, 1.5)] if self.rng.random() < 0.5 else [(0, 0.9), (1, 0.9), (2, 0.9), (3, 0.9)]
        return [Note(self._swung(bar * 4 + beat), length, p, self._velocity(70))
                for bar in range(self.nb_bars) for beat, length in rhythm for p in self.chord(bar, 4, 4)]

    def _arpeggio(self) -> list[Note]:
        """Eighth- or sixteenth-note broken chords (guitar)."""
        step = float(self.rng.choice([0.5, 0.5, 0.25]))
        order = [0, 1, 2, 3, 2, 1]
        notes = []
        for bar in range(self.nb_bars):
            tones = self.chord(bar, 3, 4)
            for i in range(int(4 / step)):
                notes.append(Note(self._swung(bar * 4 + i * step), step * 1.6, tones[order[i % len(order)]], self._velocity(72)))
        return notes

    def _sustain(self) -> list[Note]:
        """Whole-bar chords (strings, pads), silent in the intro half the time."""
        quiet_intro = self.rng.random() < 0.5
        return [Note(bar * 4, 3.95, p, self._velocity(64, 6)) for bar in range(self.nb_bars)
                if not (quiet_intro and self.section_of(bar).kind == "intro") for p in self.chord(bar, 4)]

    def _stabs(self) -> list[Note]:
        """Short off-beat chords in choruses, held notes elsewhere (brass)."""
        notes = []
        for bar in range(self.nb_bars):
            chord = self.chord(bar, 4)
            if self.section_of(bar).kind == "chorus":
                notes += [Note(bar * 4 + beat, 0.35, p, self._velocity(88)) for beat in (0.5, 1.5, 3.5) for p in chord]
            else:
                notes += [Note(bar * 4, 1.9, p, self._velocity(66)) for p in chord[:2]]
        return notes


def write_midi(parts: list[Part], bpm: float, path: Path, rng: np.random.Generator, timing_ms: float) -> None:
    """Write parts as a type-1 MIDI file, humanising onsets by ``timing_ms`` (normal, ms)."""
    midi = mido.MidiFile(type=1, ticks_per_beat=TICKS_PER_BEAT)
    meta = mido.MidiTrack([mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(bpm), time=0)])
    midi.tracks.append(meta)
    ticks_per_ms = TICKS_PER_BEAT * bpm / 60000.0
    for part in parts:
        # On channel 10 a program change picks a drum kit (FluidSynth's bank 128): no bank select needed.
        events = [(0, 0, mido.Message("program_change", channel=part.channel, program=part.program)),
                  (0, 0, mido.Message("control_change", channel=part.channel, control=10, value=part.pan)),
                  (0, 0, mido.Message("control_change", channel=part.channel, control=7, value=100))]
        for note in part.notes:
            start = max(0, int(round(note.beat * TICKS_PER_BEAT + rng.normal(0, timing_ms) * ticks_per_ms)))
            stop = max(start + 1, int(round((note.beat + note.length) * TICKS_PER_BEAT)))
            # Order at equal ticks: note-offs (1) before note-ons (2) so repeated notes retrigger.
            events.append((start, 2, mido.Message("note_on", channel=part.channel, note=note.pitch, velocity=note.velocity)))
            events.append((stop, 1, mido.Message("note_off", channel=part.channel, note=note.pitch, velocity=0)))
        events.sort(key=lambda e: (e[0], e[1]))
        track, now = mido.MidiTrack(), 0
        for tick, _, message in events:
            track.append(message.copy(time=tick - now))
            now = tick
        midi.tracks.append(track)
    midi.save(str(path))

