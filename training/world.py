"""The demo world: endless procedural videos of colored shapes, and the prompts that describe them.

A scene is drawn from a seed; every frame is a closed-form function of the frame number, so a
window deep inside an endless video costs the same as the first frames and training can cut
clips on the fly. Pixels are hard-edged palette colors, so a benchmark can read a frame back into
"which object is where".

Pillar scenes test memory: a full-height bar in front of the objects hides a slow object for more
than 1.8 seconds per pass (longer than the denoiser's window), and it must come out unchanged.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

FPS = 24
SIZE = 64

PALETTE: dict[str, tuple[int, int, int]] = {
    "black": (16, 16, 16),
    "white": (240, 240, 240),
    "gray": (128, 128, 128),
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 210, 40),
    "orange": (245, 140, 30),
    "purple": (140, 60, 190),
    "cyan": (40, 200, 210),
}
SHAPES = ("ball", "square", "triangle")
DIRECTIONS = ("left", "right", "up", "down")
MOTIONS = ("bouncing",) + DIRECTIONS
SPEEDS = {"slowly": (0.4, 0.8), "quickly": (1.5, 2.5)}  # pixels per frame
# Inclusive, pixels. Large enough that an object covers over 1% of the frame and more than one latent
# position of the 8x-downsampling VAE, so its color survives encoding.
OBJECT_SIZES = (12, 20)
OCCLUSION_RATE = 0.3
# Promised per pass behind a pillar: longer than the denoiser's window (1 clean + 4 noisy chunks of 8 frames).
MIN_HIDDEN_FRAMES = 44
PILLAR_OBJECT_SIZE = 10
# Narrow enough that the background stays the most frequent color: 64 - 30 = 34 columns of
# background minus two 10 px objects still outnumber 30 columns of pillar.
PILLAR_WIDTHS = (28, 30)  # inclusive, pixels
START_RANGE = 10 * 60 * FPS  # sample_clip starts anywhere in the first ten minutes

# Every spelling a prompt may use for a word, canonical first; the canonical one names it in a Scene.
SPELLINGS = {
    "gray": ("gray", "grey"),
    "ball": ("ball", "circle"),
    "square": ("square", "box"),
    "slowly": ("slowly", "slow"),
    "quickly": ("quickly", "fast"),
    "pillar": ("pillar", "bar"),
    "background": ("background", "backdrop"),
    "moving": ("moving", "passing"),
}
_ADJECTIVES = {"slowly": "slow", "quickly": "fast"}
_FILLER = frozenset(("a", "an", "the", "and", "on", "in", "with", "of", "front", "behind"))
_CANONICAL = {spelling: word for word, spellings in SPELLINGS.items() for spelling in spellings}
_WORD = re.compile(r"[a-z]+")  # the text encoder splits prompts the same way


@dataclass(frozen=True)
class SceneObject:
    shape: str  # canonical: ball, square or triangle
    color: str
    size: int  # side of the bounding square, pixels
    x: float  # top-left corner at frame 0, pixels
    y: float
    vx: float  # pixels per frame; the sign flips at each bounce off a frame edge
    vy: float


@dataclass(frozen=True)
class Pillar:
    color: str
    x: int  # leftmost column
    width: int


@dataclass(frozen=True)
class Scene:
    background: str
    objects: tuple[SceneObject, ...]
    motion: str  # one of MOTIONS, shared by all objects
    speed: str  # one of SPEEDS
    pillar: Pillar | None = None

    def __post_init__(self):
        if not 1 <= len(self.objects) <= 2:
            raise ValueError(f"a scene holds one or two objects, not {len(self.objects)}")
        if self.background not in PALETTE:
            raise ValueError(f"background color {self.background!r} is not in the palette")
        if self.motion not in MOTIONS or self.speed not in SPEEDS:
            raise ValueError(f"motion {self.motion!r} / speed {self.speed!r}: expected one of "
                             f"{MOTIONS} / {tuple(SPEEDS)}")
        for obj in self.objects:
            if obj.shape not in SHAPES or obj.color not in PALETTE:
                raise ValueError(f"unknown shape or color: {obj.color} {obj.shape}")
            if obj.color == self.background:
                raise ValueError(f"a {obj.color} {obj.shape} would vanish on a {obj.color} background")
        if self.pillar is not None:
            taken = {self.background} | {obj.color for obj in self.objects}
            if self.pillar.color not in PALETTE or self.pillar.color in taken:
                raise ValueError(f"the pillar's color {self.pillar.color!r} must be a palette color "
                                 f"other than the background's and the objects'")


@dataclass(frozen=True)
class Drift:
    """How a model's own video strays from the world: objects that swell or shrink about their centres, fade
    toward the background, and soft edges; a pillar that widens. Training shows the denoiser pasts drawn
    this way with the true continuation as the target, so it learns to pull a drifted scene back rather than
    carry the drift on. The default draws the world as it is."""
    scale: float = 1.0         # an object's side, times its true side
    fade: float = 1.0          # 1: the object's own color; 0: the background's
    blur: float = 0.0          # Gaussian sigma over the whole frame, pixels
    pillar_scale: float = 1.0  # the pillar's width, times its true width

    def toward_truth(self, amount: float) -> "Drift":
        """This drift with only `amount` of it left (1: all of it, 0: the world as it is), each part eased
        back on its own scale (sizes geometrically, fade and blur linearly)."""
        return Drift(scale=self.scale ** amount, fade=self.fade + (1 - self.fade) * (1 - amount), blur=self.blur * amount,
                     pillar_scale=self.pillar_scale ** amount)


def sample_drift(rng: np.random.Generator) -> Drift:
    """One drift per video, spanning what the demo model's videos show: objects from half to twice their
    side (a quarter to four times their area), faded up to 70% of the way to the background, edges blurred
    up to 2 pixels, the pillar up to half again as wide."""
    return Drift(scale=float(2 ** rng.uniform(-1, 1)), fade=float(rng.uniform(0.3, 1.0)),
                 blur=float(rng.uniform(0, 2)), pillar_scale=float(rng.uniform(1.0, 1.5)))


def sample_scene(seed: int, occlusion: bool | None = None) -> Scene:
    """A random scene; `occlusion` forces a pillar scene (True) or none (False)."""
    rng = np.random.default_rng(seed)
    pillar = bool(rng.random() < OCCLUSION_RATE) if occlusion is None else occlusion
    shapes = [_pick(rng, SHAPES) for _ in range(int(rng.integers(1, 3)))]
    return _build(rng, shapes, [None] * len(shapes), None, pillar, None,
                  ("left", "right") if pillar else MOTIONS, ("slowly",) if pillar else tuple(SPEEDS))


def scene_from_prompt(prompt: str, seed: int) -> Scene:
    """The scene a prompt asks for; whatever it leaves out is drawn from `seed`."""
    words = _WORD.findall(prompt.lower())
    unplaced: list[str] = []
    objects: list[tuple[str, str | None]] = []
    background = pillar_color = motion = speed = None
    named_background = pillar = moving = False
    for i, spelling in enumerate(words):
        word = _CANONICAL.get(spelling, spelling)
        # A color belongs to the noun right after it; this keeps "a red ball on a blue box" unambiguous.
        color = _CANONICAL.get(words[i - 1], words[i - 1]) if i else None
        color = color if color in PALETTE else None
        if word in PALETTE:
            following = _CANONICAL.get(words[i + 1], words[i + 1]) if i + 1 < len(words) else None
            if following not in SHAPES and following not in ("pillar", "background"):
                unplaced.append(f"{spelling!r} (a color goes right before a shape, pillar or background)")
        elif word in SHAPES:
            if len(objects) == 2:
                unplaced.append(f"{spelling!r} (a scene holds at most two objects)")
            else:
                objects.append((word, color))
        elif word == "pillar":
            if pillar:
                unplaced.append(f"{spelling!r} (a scene holds at most one pillar)")
            pillar, pillar_color = True, color
        elif word == "background":
            if named_background:
                unplaced.append(f"{spelling!r} (the background is already named)")
            named_background, background = True, color
        elif word in MOTIONS:
            if motion not in (None, word):
                unplaced.append(f"{spelling!r} (conflicts with {motion!r})")
            motion = word
        elif word in SPEEDS:
            if speed not in (None, word):
                unplaced.append(f"{spelling!r} (conflicts with {speed!r})")
            speed = word
        elif word == "moving":
            moving = True
        elif word not in _FILLER:
            unplaced.append(f"{spelling!r} (unknown word)")
    if unplaced:
        raise ValueError(f"cannot place these words of {prompt!r}: {', '.join(unplaced)}")
    if not objects:
        raise ValueError(f"{prompt!r} names no object: use ball, circle, square, box or triangle")
    if motion is not None:
        motions: tuple[str, ...] = (motion,)
    elif pillar:
        motions = ("left", "right")  # the only motion that is sure to pass behind the pillar
    else:
        motions = DIRECTIONS if moving else MOTIONS
    speeds = (speed,) if speed else ("slowly",) if pillar else tuple(SPEEDS)
    rng = np.random.default_rng(seed)
    return _build(rng, [shape for shape, _ in objects], [color for _, color in objects], background,
                  pillar, pillar_color, motions, speeds)


def describe(scene: Scene) -> str:
    """The canonical prompt: every attribute, in one fixed phrasing."""
    subject = " and ".join(_noun_phrase([obj.color, obj.shape]) for obj in scene.objects)
    verb = "bouncing" if scene.motion == "bouncing" else f"moving {scene.motion}"
    words = [subject, verb, scene.speed]
    if scene.pillar is not None:
        words.append(f"behind {_noun_phrase([scene.pillar.color, 'pillar'])}")
    words.append(f"on {_noun_phrase([scene.background, 'background'])}")
    return " ".join(words)


def sample_prompt(scene: Scene, seed: int, drop: float = 0.25) -> str:
    """A varied prompt for `scene`: word order, synonyms, and each optional attribute (object colors,
    speed, background color, pillar color) left out with probability `drop`."""
    rng = np.random.default_rng(seed)

    def keep() -> bool:
        return bool(rng.random() >= drop)

    def say(word: str) -> str:
        return _pick(rng, SPELLINGS.get(word, (word,)))

    def article() -> str | None:
        return "the" if rng.random() < 0.3 else None

    speed_form = _pick(rng, ("after", "before", "adjective")) if keep() else None
    objects = list(scene.objects)
    if rng.random() < 0.5:
        objects.reverse()
    nouns = []
    for obj in objects:
        words = [_ADJECTIVES[scene.speed]] if speed_form == "adjective" else []
        if keep():
            words.append(say(obj.color))
        words.append(say(obj.shape))
        nouns.append(_noun_phrase(words))
    if scene.motion == "bouncing":
        verb = "bouncing"
    else:
        # "passing left" only reads right when there is something to pass.
        verb = f"{say('moving') if scene.pillar else 'moving'} {scene.motion}"
    if speed_form == "after":
        verb = f"{verb} {say(scene.speed)}"
    elif speed_form == "before":
        verb = f"{scene.speed} {verb}"
    core = f"{' and '.join(nouns)} {verb}"
    tail = []
    if scene.pillar is not None:
        pillar_words = ([say(scene.pillar.color)] if keep() else []) + [say("pillar")]
        form = _pick(rng, ("behind", "in front of", "with"))
        if form == "behind":
            core = f"{core} behind {_noun_phrase(pillar_words, article())}"
        elif form == "in front of":
            core = f"{_noun_phrase(pillar_words)} in front of {core}"
        else:
            tail.append(f"with {_noun_phrase(pillar_words)} in front")
    if keep():
        background_words = [say(scene.background), say("background")]
        if rng.random() < 0.5:
            core = f"{' '.join(background_words)} with {core}"
        else:
            tail.insert(0, f"on {_noun_phrase(background_words, article())}")
    return " ".join([core] + tail)


def positions(scene: Scene, start: int, frames: int) -> np.ndarray:
    """Top-left corners `(x, y)` of the objects, int64 `[frames, n_objects, 2]`, from frame `start`."""
    if frames < 0:
        raise ValueError(f"frames must be >= 0, got {frames}")
    t = np.arange(start, start + frames, dtype=np.float64)
    corners = np.empty((frames, len(scene.objects), 2), np.int64)
    for i, obj in enumerate(scene.objects):
        span = SIZE - obj.size
        corners[:, i, 0] = _reflect(obj.x + obj.vx * t, span)
        corners[:, i, 1] = _reflect(obj.y + obj.vy * t, span)
    return corners


def shown(scene: Scene, start: int, frames: int, drift: Drift | None = None) -> np.ndarray:
    """What each pixel of frames `start .. start + frames - 1` shows, int8 `[frames, 64, 64]`: 0 the
    background, i + 1 the scene's object i, len(objects) + 1 the pillar (later objects drawn over earlier
    ones, the pillar over all); with `drift`, the objects sized and the pillar widened as `render` draws them."""
    drift = Drift() if drift is None else drift
    corners = positions(scene, start, frames)
    owner = np.zeros((frames, SIZE, SIZE), np.int8)
    index = np.arange(frames)[:, None]
    for i, obj in enumerate(scene.objects):
        size = max(2, round(obj.size * drift.scale))
        offset = (obj.size - size) // 2  # resized about the object's centre
        rows, cols = np.nonzero(_sprite(obj.shape, size))
        y, x = corners[:, i, 1:2] + offset + rows, corners[:, i, 0:1] + offset + cols
        inside = (y >= 0) & (y < SIZE) & (x >= 0) & (x < SIZE)  # a grown object may reach past the edge
        owner[np.broadcast_to(index, y.shape)[inside], y[inside], x[inside]] = i + 1
    if scene.pillar is not None:
        width = max(1, round(scene.pillar.width * drift.pillar_scale))
        left = scene.pillar.x + (scene.pillar.width - width) // 2
        owner[:, :, max(0, left):min(SIZE, left + width)] = len(scene.objects) + 1
    return owner


def render(scene: Scene, start: int, frames: int, drift: Drift | None = None) -> np.ndarray:
    """Frames `start .. start + frames - 1` of the scene's endless video, uint8 `[frames, 64, 64, 3]`;
    with `drift`, its objects and pillar drawn the way a model's own video loses them (see `Drift`)."""
    drift = Drift() if drift is None else drift
    background = np.array(PALETTE[scene.background], np.float64)
    objects = [drift.fade * np.array(PALETTE[obj.color]) + (1 - drift.fade) * background for obj in scene.objects]
    pillar = [PALETTE[scene.pillar.color]] if scene.pillar is not None else []
    colors = np.round(np.array([background] + objects + pillar)).astype(np.uint8)
    video = colors[shown(scene, start, frames, drift)]
    return _blur(video, drift.blur) if drift.blur > 0 else video


def coming_back(scene: Scene, start: int, frames: int, hidden_at: int) -> np.ndarray:
    """bool `[frames, 64, 64]`: the pixels of frames `start ..` that show an object entirely behind the
    pillar at frame `hidden_at`, one that comes back out (where memory alone can say what it looks like)."""
    behind = np.flatnonzero(hidden(scene, hidden_at, 1)[0])
    return np.isin(shown(scene, start, frames), behind + 1)


def hidden(scene: Scene, start: int, frames: int) -> np.ndarray:
    """bool `[frames, n_objects]`: the object is entirely behind the pillar (no pixel of it shows)."""
    corners = positions(scene, start, frames)
    covered = np.zeros((frames, len(scene.objects)), bool)
    if scene.pillar is None:
        return covered
    left, right = scene.pillar.x, scene.pillar.x + scene.pillar.width
    for i, obj in enumerate(scene.objects):
        columns = np.flatnonzero(_sprite(obj.shape, obj.size).any(axis=0))
        x = corners[:, i, 0]
        covered[:, i] = (x + columns[0] >= left) & (x + columns[-1] < right)
    return covered


def sample_clip(seed: int, frames: int, drop: float = 0.25) -> tuple[np.ndarray, str]:
    """A random scene seen from a random frame on: its frames and a varied prompt for it."""
    rng = np.random.default_rng(seed)
    # Separate streams: reusing `seed` for both would tie the prompt's choices to the scene's.
    scene_seed, prompt_seed = (int(s) for s in rng.integers(0, 2**63 - 1, size=2))
    scene = sample_scene(scene_seed)
    start = int(rng.integers(0, START_RANGE))
    return render(scene, start, frames), sample_prompt(scene, prompt_seed, drop)


def _build(rng: np.random.Generator, shapes: list[str], colors: list[str | None], background: str | None,
           pillar: bool, pillar_color: str | None, motions: tuple[str, ...], speeds: tuple[str, ...]) -> Scene:
    """The one place scenes get their geometry, so prompted and sampled scenes follow the same rules."""
    named = {c for c in colors if c} | ({pillar_color} if pillar_color else set())
    if background is None:
        background = _pick(rng, [c for c in PALETTE if c not in named])
    colors = [c or _pick(rng, [p for p in PALETTE if p not in (background, pillar_color)]) for c in colors]
    if pillar and pillar_color is None:
        pillar_color = _pick(rng, [p for p in PALETTE if p != background and p not in colors])
    motion, speed = _pick(rng, motions), _pick(rng, speeds)
    sizes = [PILLAR_OBJECT_SIZE if pillar else int(rng.integers(OBJECT_SIZES[0], OBJECT_SIZES[1] + 1))
             for _ in shapes]
    low, high = SPEEDS[speed]
    post = None
    if pillar:
        width = int(rng.integers(PILLAR_WIDTHS[0], PILLAR_WIDTHS[1] + 1))
        # Room on both sides for the object to stand fully clear of the pillar before it turns back.
        margin = PILLAR_OBJECT_SIZE + 2
        post = Pillar(pillar_color, int(rng.integers(margin, SIZE - margin - width + 1)), width)
        if speed == "slowly":
            # The corner is fully covered at width - size + 1 whole-pixel positions; crossing them
            # takes that many pixels / speed frames, and rounding to whole frames and pixels may
            # cost one or two of them, hence the slack of 3.
            high = min(high, (width - PILLAR_OBJECT_SIZE + 1) / (MIN_HIDDEN_FRAMES + 3))
    lanes = _lanes(rng, sizes) if motion != "bouncing" else None
    objects = []
    for i, (shape, color, size) in enumerate(zip(shapes, colors, sizes)):
        v = float(rng.uniform(low, high))
        travel = float(rng.uniform(0, SIZE - size))
        if motion == "bouncing":
            angle = float(rng.uniform(math.radians(25), math.radians(65)))
            sx, sy = (int(s) for s in rng.choice((-1, 1), size=2))
            obj = SceneObject(shape, color, size, travel, float(rng.uniform(0, SIZE - size)),
                              sx * v * math.cos(angle), sy * v * math.sin(angle))
        elif motion in ("left", "right"):
            obj = SceneObject(shape, color, size, travel, float(lanes[i]), v if motion == "right" else -v, 0.0)
        else:  # image rows grow downwards
            obj = SceneObject(shape, color, size, float(lanes[i]), travel, 0.0, v if motion == "down" else -v)
        objects.append(obj)
    return Scene(background, tuple(objects), motion, speed, post)


def _lanes(rng: np.random.Generator, sizes: list[int]) -> list[int]:
    """Disjoint offsets across the direction of travel, so objects moving along one axis never overlap."""
    order = rng.permutation(len(sizes))
    starts = np.sort(rng.integers(0, SIZE - sum(sizes) + 1, size=len(sizes)))
    lanes = [0] * len(sizes)
    below = 0
    for start, i in zip(starts, order):
        lanes[i] = int(start) + below
        below += sizes[i]
    return lanes


def _reflect(p: np.ndarray, span: int) -> np.ndarray:
    """Whole-pixel position of a point bouncing between 0 and `span`: the unfolded path folded by a
    triangle wave, so any frame costs the same to compute."""
    p = np.mod(p, 2 * span)
    return np.floor(np.where(p > span, 2 * span - p, p) + 0.5).astype(np.int64)


def _sprite(shape: str, size: int) -> np.ndarray:
    """bool `[size, size]`, a pixel is in when its centre is: hard edges, no blending with the background."""
    c = np.arange(size) + 0.5 - size / 2
    dy, dx = c[:, None], c[None, :]
    if shape == "ball":
        return dx**2 + dy**2 <= (size / 2) ** 2
    if shape == "square":
        return np.ones((size, size), bool)
    # Apex at the top centre, base along the bottom row; measured from each row's bottom edge so the
    # top row is not empty.
    return np.abs(dx) <= (dy + size / 2 + 0.5) / 2


def _blur(video: np.ndarray, sigma: float) -> np.ndarray:
    """A Gaussian blur of each frame (edges repeated past the border), uint8 in and out."""
    radius = max(1, math.ceil(3 * sigma))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    x = video.astype(np.float64)
    for axis in (1, 2):
        padded = np.pad(x, [(radius, radius) if a == axis else (0, 0) for a in range(4)], mode="edge")
        x = sum(w * np.take(padded, np.arange(k, k + video.shape[axis]), axis=axis) for k, w in enumerate(taps))
    return np.round(x).clip(0, 255).astype(np.uint8)


def _noun_phrase(words: list[str], article: str | None = None) -> str:
    return f"{article or ('an' if words[0][0] in 'aeiou' else 'a')} {' '.join(words)}"


def _pick(rng: np.random.Generator, options) -> str:
    return options[int(rng.integers(len(options)))]
