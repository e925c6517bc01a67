"""The synthetic catalog behind `jobs.synthetic.generate`: genres, artists, tracks, podcast shows and episodes.

Titles and descriptions are built from word lists tied to a genre (moods, instruments, themes) or a
podcast topic (show words, subjects), and they name the artist or show. So a text encoder sees the
same latent structure (genre, artist, show) that drives listening in the simulator, and semantic IDs
built from item text can carry signal about it.

Items have a dense index (their position in the Catalog's arrays) and a public id ("trk_000001",
"epi_000001"); the catalog only grows, and edits change text in place.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from jobs.config import GeneratorConfig

# genre -> (moods | instruments | themes); "|" separates entries.
MUSIC_GENRES: dict[str, tuple[str, str, str]] = {
    "synthwave": ("neon|retro|nocturnal|chrome|electric|hazy",
                 "analog synths|gated drums|arpeggiators|vocoder",
                 "midnight drive|laser grid|city lights|sunset boulevard|arcade dreams|vhs memories"),
    "jazz": ("smoky|swinging|late-night|cool|bluesy|velvet",
            "upright bass|brushed drums|muted trumpet|tenor sax|piano trio",
            "blue note|after hours|basement club|rainy avenue|bebop stroll|moonlit standard"),
    "hip hop": ("gritty|bouncy|boom-bap|hard-hitting|laid-back|cocky",
               "808s|vinyl samples|turntable scratches|sampled breaks|punchy snares",
               "block party|corner store|hustle|city streets|cipher|come-up"),
    "indie folk": ("tender|rustic|wistful|earthy|hushed|pastoral",
                  "acoustic guitar|banjo|fiddle|harmonium|fingerpicked strings",
                  "pine woods|old porch|river crossing|hometown|harvest moon|campfire"),
    "techno": ("hypnotic|relentless|industrial|minimal|driving|dark",
              "kick drums|modular synths|acid basslines|hi-hat loops|909 drums",
              "warehouse|berlin night|strobe|machine pulse|concrete floor|sunrise set"),
    "classical": ("stately|luminous|solemn|graceful|romantic|baroque",
                 "string quartet|grand piano|chamber orchestra|harpsichord|cello",
                 "sonata|nocturne|overture|fugue|adagio|requiem"),
    "metal": ("brutal|thunderous|blackened|furious|doom-laden|shredding",
             "distorted guitars|double kick drums|growled vocals|seven-string riffs",
             "iron throne|abyss|burning sky|war machine|frozen wastes|serpent"),
    "reggae": ("sunny|easygoing|roots|dubby|uplifting|island",
              "offbeat guitar|dub bass|melodica|hand drums|bubbling organ",
              "kingston|one love|sound system|yard|sunsplash|rebel road"),
    "k-pop": ("sparkling|glossy|playful|dazzling|catchy|sweet",
             "synth hooks|group vocals|trap beats|bright pianos|dance breaks",
             "first love|starlight|summer crush|dance floor|seoul nights|fan chant"),
    "blues": ("soulful|weary|twelve-bar|raw|mournful|delta",
             "slide guitar|harmonica|shuffle drums|hollow-body guitar",
             "crossroads|muddy water|midnight train|lonesome road|juke joint|hard times"),
    "ambient": ("drifting|ethereal|calm|spacious|glacial|meditative",
               "field recordings|synth pads|tape loops|granular textures|soft drones",
               "still lake|cloud cover|deep space|morning fog|slow tide|quiet room"),
    "country": ("twangy|heartfelt|honky-tonk|dusty|rowdy|homespun",
               "pedal steel|fiddle|telecaster|acoustic strumming|saloon piano",
               "back roads|pickup truck|whiskey bar|small town|county fair|open range"),
    "punk rock": ("loud|snotty|fast|ragged|rebellious|sweaty",
                 "power chords|buzzsaw guitars|shouted vocals|pounding drums",
                 "basement show|anarchy|skate park|no future|city riot|garage"),
    "soul": ("warm|silky|gospel-tinged|tender|groovy|smooth",
            "horn section|hammond organ|falsetto vocals|rhodes piano|tight rhythm section",
            "sweet love|sunday morning|heartache|candlelight|brown sugar|tender promise"),
    "house": ("euphoric|deep|groovy|sunlit|jacking|late-night",
             "four-on-the-floor kicks|piano stabs|disco samples|diva vocals|sub bass",
             "dance floor|ibiza sunrise|chicago warehouse|club night|rooftop party|afterglow"),
    "latin pop": ("sultry|vibrant|festive|passionate|tropical|fiery",
                 "reggaeton beats|nylon guitar|congas|brass stabs|dembow rhythm",
                 "corazon|fiesta|summer heat|beach bonfire|dance till dawn|amor"),
    "drum and bass": ("rolling|frantic|liquid|breakneck|murky|atmospheric",
                     "amen breaks|reese bass|chopped breakbeats|jungle pads|sub bass",
                     "night bus|rave tunnel|high velocity|urban jungle|neon rain|soundclash"),
    "bossa nova": ("breezy|gentle|sun-drenched|intimate|lilting|wistful",
                  "nylon guitar|soft brushes|flute|hushed vocals|samba rhythm",
                  "ipanema|seaside cafe|rio evening|copacabana|soft breeze|summer samba"),
    "lo-fi": ("dusty|chill|sleepy|mellow|cozy|nostalgic",
             "vinyl crackle|jazzy chords|tape hiss|lazy drums|muted keys",
             "study session|rainy window|late homework|coffee shop|cozy room|daydream"),
    "gospel": ("joyful|uplifting|spirited|reverent|soaring|devotional",
              "choir|hammond organ|hand claps|grand piano|call and response",
              "sunday service|glory|amazing grace|higher ground|praise|redemption"),
}
GENRE_VARIANTS = ("", "neo ", "dark ", "nu ")  # more genres than names: "neo jazz", "dark jazz", ...

# topic -> (show words | show nouns | episode subjects)
PODCAST_TOPICS: dict[str, tuple[str, str, str]] = {
    "true crime": ("cold|hidden|midnight|unsolved|dark",
                  "case files|docket|evidence room|trail|witness",
                  "a missing heiress|the harbor murders|a forged will|"
                  "a vanished hiker|the bank heist|a decades-old cold case"),
    "comedy": ("silly|late|awkward|unfiltered|half-baked",
              "hour|hangout|roast|nonsense|couch",
              "embarrassing first dates|the worst roommates|airport disasters|"
              "bad tattoos|office pranks|family holidays"),
    "technology": ("future|open|silicon|byte-sized|digital",
                  "stack|frontier|lab|signal|changelog",
                  "large language models|quantum computing|chip supply chains|"
                  "open source funding|self-driving cars|security breaches"),
    "history": ("forgotten|ancient|lost|epic|revolutionary",
               "empires|chronicles|archives|dispatches|ages",
               "the fall of rome|the silk road|the french revolution|viking voyages|the space race|the cold war"),
    "science": ("curious|cosmic|deep|tiny|big",
               "questions|lab notes|universe|discoveries|frontiers",
               "black holes|the human microbiome|deep sea creatures|gene editing|climate models|the origin of life"),
    "business": ("bottom|market|startup|bold|smart",
                "line|moves|playbook|boardroom|ledger",
                "startup fundraising|supply chain shocks|the future of retail|"
                "interest rates|founder burnout|mergers and acquisitions"),
    "sports": ("full|final|locker|fast|game",
              "time|whistle|room talk|break|day",
              "the championship final|transfer rumours|a record-breaking season|"
              "coaching tactics|rookie of the year|the derby"),
    "health": ("mindful|healthy|better|strong|calm",
              "living|body|habits|mind|balance",
              "sleep science|intermittent fasting|marathon training|stress and burnout|gut health|strength training"),
    "news": ("daily|morning|weekly|global|inside",
            "briefing|report|dispatch|roundup|headlines",
            "election season|the housing crisis|global trade talks|"
            "a record heatwave|new climate policy|the energy market"),
    "film": ("reel|midnight|cinema|directors|popcorn",
            "talk|club|cut|screening|review",
            "the summer blockbusters|a noir classic|the awards race|"
            "cult horror films|animated features|the best sequels"),
}
FIRST_NAMES = (
    "ada ben chloe dev elena farah gus hana ivan jade kofi lena mateo nina omar priya quinn rosa sam "
    "tariq"
).split()
LAST_NAMES = (
    "abbott baker costa diaz ellis fischer garcia hughes ito jensen kim lopez moreau novak okafor patel "
    "reyes silva tanaka weber"
).split()
BAND_NOUNS = (
    "pilots echoes tigers collective orchestra brothers society machines ghosts satellites lanterns "
    "sisters club union wolves"
).split()
TITLE_WORDS = (
    "heart fire again tonight home gold forever rain dreams shadows highway letters mirrors wildfire "
    "horizon"
).split()
HOST_VERBS = "digs into|unpacks|breaks down|explores|revisits|debates|investigates".split("|")
SMALL_WORDS = {"of", "the", "and", "a", "in", "on"}
TITLE_EDITS = (" (Remastered)", " (Radio Edit)", " (Live)", " (Acoustic)", " (Deluxe)")

TRACK, EPISODE = "track", "episode"


@dataclass
class Catalog:
    """Everything the simulator and the catalog drops need to know about artists, shows and items."""

    labels: list[str]  # genre labels: music genres (0..n_music_genres-1), then podcast topics
    n_music_genres: int
    genre_weight: np.ndarray  # (n_music_genres,) how popular each genre is
    artist_names: list[str]
    artist_genre: np.ndarray  # (n_artists,) label index
    artist_weight: np.ndarray  # (n_artists,) Zipf-like within genre
    show_names: list[str]
    show_hosts: list[str]
    show_topic: np.ndarray  # (n_shows,) label index
    show_weight: np.ndarray  # (n_shows,)
    show_minutes: np.ndarray  # (n_shows,) typical episode length; episodes vary around it
    show_episodes: list[list[int]] = field(default_factory=list)  # item indices in episode order
    # Items by dense index. Arrays grow once per day; text lists change in place on edits.
    item_ids: list[str] = field(default_factory=list)
    is_episode: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    genre: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    artist: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # -1 for episodes
    show: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # -1 for tracks
    duration_ms: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    weight: np.ndarray = field(default_factory=lambda: np.zeros(0))  # base popularity
    first_day: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # day index it appeared
    titles: list[str] = field(default_factory=list)
    descriptions: list[str] = field(default_factory=list)
    n_tracks: int = 0
    n_episodes: int = 0

    @property
    def size(self) -> int:
        return len(self.item_ids)

    def row(self, i: int) -> dict:
        """The catalog drop row of item index i (keys in the drop's order)."""
        episode = bool(self.is_episode[i])
        return {
            "item_id": self.item_ids[i], "item_type": EPISODE if episode else TRACK,
            "title": self.titles[i], "description": self.descriptions[i], "genre": self.labels[self.genre[i]],
            "artist": None if episode else self.artist_names[self.artist[i]],
            "show": self.show_names[self.show[i]] if episode else None, "duration_ms": int(self.duration_ms[i]),
        }


def genre_names(n: int) -> list[str]:
    """n music genre labels: the named genres first, then variants ("neo jazz") if more are asked for."""
    names = [variant + name for variant in GENRE_VARIANTS for name in MUSIC_GENRES]
    if not 1 <= n <= len(names):
        raise ValueError(f"generator.genres must be between 1 and {len(names)}, got {n}.")
    return names[:n]


def build_catalog(cfg: GeneratorConfig, rng: np.random.Generator) -> Catalog:
    """The initial catalog (day index 0): cfg.tracks tracks by genres*artists_per_genre artists and
    cfg.episodes episodes spread over cfg.shows shows, one podcast topic per genres//2 (1..10)."""
    n_genres, n_artists = cfg.genres, cfg.genres * cfg.artists_per_genre
    n_topics = max(1, min(len(PODCAST_TOPICS), cfg.genres // 2))
    if cfg.tracks < n_artists or cfg.episodes < cfg.shows or cfg.shows < 1:
        raise ValueError(
            f"generator.tracks ({cfg.tracks}) must be >= genres*artists_per_genre ({n_artists}) and "
            f"generator.episodes ({cfg.episodes}) >= shows ({cfg.shows}) >= 1, so every artist and show has items."
        )
    labels = genre_names(n_genres) + list(PODCAST_TOPICS)[:n_topics]
    genre_weight = _zipf(rng.permutation(n_genres), 0.6)
    artist_genre = np.repeat(np.arange(n_genres), cfg.artists_per_genre)
    artist_weight = _zipf(np.concatenate([rng.permutation(cfg.artists_per_genre) for _ in range(n_genres)]), 1.0)
    artist_names = [_artist_name(labels[g], rng) for g in artist_genre]
    show_topic = n_genres + rng.permutation(np.arange(cfg.shows) % n_topics)  # every topic has a show
    show_weight = _zipf(rng.permutation(cfg.shows), 1.0)
    show_names = [_show_name(labels[t], rng) for t in show_topic]
    show_hosts = [_person(rng) for _ in range(cfg.shows)]
    show_minutes = rng.uniform(20.0, 75.0, cfg.shows)
    cat = Catalog(labels, n_genres, genre_weight, artist_names, artist_genre, artist_weight, show_names,
                  show_hosts, show_topic, show_weight, show_minutes, [[] for _ in range(cfg.shows)])

    # Every artist has a track; popular artists in popular genres have more (a skewed catalog).
    reach = artist_weight * genre_weight[artist_genre]
    per_artist = 1 + rng.multinomial(cfg.tracks - n_artists, reach / reach.sum())
    _add_tracks(cat, np.repeat(np.arange(n_artists), per_artist), day=0, rng=rng)
    backlog = np.sqrt(show_weight)  # long-running shows, but no single show owns the catalog
    per_show = 1 + rng.multinomial(cfg.episodes - cfg.shows, backlog / backlog.sum())
    _add_episodes(cat, np.repeat(np.arange(cfg.shows), per_show), day=0, rng=rng)
    return cat


def add_new_items(cat: Catalog, n: int, day: int, rng: np.random.Generator) -> list[int]:
    """Publish n new items on day index `day`: tracks by existing artists (popular artists release
    more) and the next episodes of existing shows, split like the catalog. Returns their indices."""
    n_episodes = int(round(n * cat.n_episodes / max(cat.size, 1)))
    p_artist, p_show = cat.artist_weight / cat.artist_weight.sum(), cat.show_weight / cat.show_weight.sum()
    start = cat.size
    _add_tracks(cat, np.sort(rng.choice(len(p_artist), n - n_episodes, p=p_artist)), day, rng)
    _add_episodes(cat, np.sort(rng.choice(len(p_show), n_episodes, p=p_show)), day, rng)
    return list(range(start, cat.size))


def edit_items(cat: Catalog, n: int, existing: int, rng: np.random.Generator) -> list[int]:
    """Change the text of n items among the first `existing` ones: a rewritten description (60%) or
    a corrected title. Item id, type, genre, artist/show and duration stay. Returns their indices."""
    picked = np.sort(rng.choice(existing, size=min(n, existing), replace=False))
    for i in picked.tolist():
        if rng.random() < 0.6:
            if cat.is_episode[i]:
                cat.descriptions[i] = _episode_description(cat, int(cat.show[i]), rng)
            else:
                cat.descriptions[i] = _track_description(cat, int(cat.genre[i]), int(cat.artist[i]), rng)
        elif cat.is_episode[i]:
            cat.titles[i] = cat.titles[i].split(", with ")[0] + f", with {_person(rng)}"
        else:
            cat.titles[i] = cat.titles[i].split(" (")[0] + _pick(rng, TITLE_EDITS)
    return picked.tolist()


def _add_tracks(cat: Catalog, artists: np.ndarray, day: int, rng: np.random.Generator) -> None:
    genres = cat.artist_genre[artists]
    for a, g in zip(artists.tolist(), genres.tolist()):
        cat.n_tracks += 1
        cat.item_ids.append(f"trk_{cat.n_tracks:06d}")
        cat.titles.append(_track_title(cat.labels[g], rng))
        cat.descriptions.append(_track_description(cat, g, a, rng))
    minutes = np.clip(rng.lognormal(np.log(3.6), 0.3, len(artists)), 1.0, 15.0)
    weight = cat.artist_weight[artists] * cat.genre_weight[genres] * rng.lognormal(0.0, 0.8, len(artists))
    _append(cat, False, genres, artists, np.full(len(artists), -1), minutes, weight, day)


def _add_episodes(cat: Catalog, shows: np.ndarray, day: int, rng: np.random.Generator) -> None:
    for s in shows.tolist():
        cat.n_episodes += 1
        cat.show_episodes[s].append(len(cat.item_ids))  # the index this episode gets
        cat.item_ids.append(f"epi_{cat.n_episodes:06d}")
        number = len(cat.show_episodes[s])
        cat.titles.append(f"Ep. {number}: {_title(_pick(rng, _topic_words(cat, s)[2]))}")
        cat.descriptions.append(_episode_description(cat, s, rng))
    minutes = np.clip(cat.show_minutes[shows] * rng.lognormal(0.0, 0.15, len(shows)), 5.0, 180.0)
    weight = cat.show_weight[shows]
    _append(cat, True, cat.show_topic[shows], np.full(len(shows), -1), shows, minutes, weight, day)


def _append(cat: Catalog, episode: bool, genres, artists, shows, minutes, weight, day: int) -> None:
    n = len(genres)
    cat.is_episode = np.concatenate([cat.is_episode, np.full(n, episode)])
    cat.genre = np.concatenate([cat.genre, np.asarray(genres, np.int64)])
    cat.artist = np.concatenate([cat.artist, np.asarray(artists, np.int64)])
    cat.show = np.concatenate([cat.show, np.asarray(shows, np.int64)])
    cat.duration_ms = np.concatenate([cat.duration_ms, np.round(minutes * 60_000).astype(np.int64)])
    cat.weight = np.concatenate([cat.weight, weight])
    cat.first_day = np.concatenate([cat.first_day, np.full(n, day, np.int64)])


# Text. Every string is drawn with rng, in a fixed order, so a seed fixes the catalog's text.
def _pick(rng: np.random.Generator, options: list[str] | tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def _genre_words(label: str) -> list[list[str]]:
    base = label.split(" ", 1)[1] if label not in MUSIC_GENRES else label  # "neo jazz" -> "jazz"
    return [part.split("|") for part in MUSIC_GENRES[base]]


def _topic_words(cat: Catalog, show: int) -> list[list[str]]:
    return [part.split("|") for part in PODCAST_TOPICS[cat.labels[cat.show_topic[show]]]]


def _person(rng: np.random.Generator) -> str:
    return f"{_pick(rng, FIRST_NAMES)} {_pick(rng, LAST_NAMES)}".title()


def _artist_name(label: str, rng: np.random.Generator) -> str:
    moods, _, themes = _genre_words(label)
    style = rng.integers(3)
    if style == 0:
        return _title(f"{_pick(rng, moods)} {_pick(rng, BAND_NOUNS)}")
    if style == 1:
        return _person(rng)
    return _title(f"the {_pick(rng, themes)} {_pick(rng, BAND_NOUNS)}")


def _track_title(label: str, rng: np.random.Generator) -> str:
    moods, _, themes = _genre_words(label)
    style = rng.integers(3)
    if style == 0:
        return _title(f"{_pick(rng, moods)} {_pick(rng, themes)}")
    if style == 1:
        return _title(f"{_pick(rng, themes)} {_pick(rng, TITLE_WORDS)}")
    return _title(f"{_pick(rng, TITLE_WORDS)} of the {_pick(rng, themes)}")


def _track_description(cat: Catalog, genre: int, artist: int, rng: np.random.Generator) -> str:
    label, name = cat.labels[genre], cat.artist_names[artist]
    moods, instruments, themes = _genre_words(label)
    first_inst, second_inst = rng.choice(len(instruments), 2, replace=False).tolist()
    mood, inst, inst2, theme = _pick(rng, moods), instruments[first_inst], instruments[second_inst], _pick(rng, themes)
    first = (
        f"A {mood} {label} track by {name}, built on {inst} and {inst2}.",
        f"{name} brings {mood} {label} energy with {inst}.",
        f"{mood.capitalize()} {inst} carries this {label} song about {theme}.",
    )[int(rng.integers(3))]
    second = ("", f" Made for {_pick(rng, themes)}.", f" Recorded by {name}.")[int(rng.integers(3))]
    return first + second


def _show_name(topic: str, rng: np.random.Generator) -> str:
    words, nouns, _ = (part.split("|") for part in PODCAST_TOPICS[topic])
    prefix = "the " if rng.random() < 0.5 else ""
    return _title(f"{prefix}{_pick(rng, words)} {_pick(rng, nouns)}")


def _episode_description(cat: Catalog, show: int, rng: np.random.Generator) -> str:
    topic, (_, _, subjects) = cat.labels[cat.show_topic[show]], _topic_words(cat, show)
    host, verb, subject = cat.show_hosts[show], _pick(rng, HOST_VERBS), _pick(rng, subjects)
    first = f"On this episode of {cat.show_names[show]}, {host} {verb} {subject}."
    second = ("", f" With special guest {_person(rng)}.",
              f" A {topic} conversation about {_pick(rng, subjects)}.")[int(rng.integers(3))]
    return first + second


def _title(text: str) -> str:
    words = text.split(" ")
    return " ".join(w if i and w in SMALL_WORDS else w[:1].upper() + w[1:] for i, w in enumerate(words))


def _zipf(rank: np.ndarray, exponent: float) -> np.ndarray:
    return 1.0 / (np.asarray(rank, float) + 1.0) ** exponent
