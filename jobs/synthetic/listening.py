"""The listening simulation behind `jobs.synthetic.generate`: users with latent tastes, sessions, events.

Each day a share of users is active; an active user has sessions; a session is either music (one
genre, drawn from the user's long-term taste mixed with the genres of recent sessions) or a followed
podcast show (the next unplayed episodes, in order). Each music slot plays the session's artist, a
popular track of the genre, a replay from the user's heavy rotation, or an exploration pick. Skips
are likelier off-taste; saves follow strongly matching plays. Tastes drift slowly day by day.

Everything is numpy arrays indexed by user index and item index (see generate_catalog.Catalog);
ids, JSON and defects are the business of jobs.synthetic.generate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from jobs.config import GeneratorConfig
from jobs.synthetic.catalog import Catalog

PLAY, SKIP, SAVE = 0, 1, 2  # event types, as in jobs.synthetic.generate.EVENT_TYPES

# Behaviour knobs. They shape the signal the encoder should find; tests/synthetic/test_generate.py pins their effect.
HISTORY = 50  # recent tracks per user that heavy-rotation replays draw from
FAVOURITES = 5  # at most this many favourite artists per user
SOURCE_P = np.array([0.35, 0.33, 0.24, 0.08])  # a music slot plays: session artist, genre hit, rotation, explore
MOMENTUM = 0.5  # weight of recent session genres (vs long-term taste) when a session picks its genre
HOUR_WEIGHT = np.array([2, 1, 1, 1, 1, 2, 4, 7, 8, 6, 5, 5, 6, 6, 5, 5, 6, 8, 9, 10, 10, 9, 7, 4], float)
DAY_MS = 86_400_000


class GroupSampler:
    """Weighted draws within groups (tracks of a genre, tracks of an artist, artists of a genre).

    sample(groups, u) -> one member per request, chosen with probability weight / group total, from
    uniforms u in [0, 1). One inverse CDF over a sorted array: the keys of group g lie in (g, g+1],
    so searchsorted(g + u) always lands inside group g. Every requested group needs a positive total.
    """

    def __init__(self, members: np.ndarray, groups: np.ndarray, weights: np.ndarray):
        order = np.lexsort((members, groups))
        self.members, g, w = members[order], groups[order], weights[order].astype(float)
        cum = np.cumsum(w)
        first = np.searchsorted(g, g, side="left")  # position of each member's group start
        within = cum - np.where(first > 0, cum[first - 1], 0.0)
        total = within[np.r_[g[1:] != g[:-1], True]]  # last member of each group holds its total
        self.total = np.zeros(g.max() + 1 if len(g) else 0)
        self.total[np.unique(g)] = total
        cdf = within / np.maximum(self.total[g], 1e-300)
        cdf[np.r_[g[1:] != g[:-1], True]] = 1.0  # no float gap at a group's end
        self.keys = g + cdf

    def sample(self, groups: np.ndarray, u: np.ndarray) -> np.ndarray:
        assert (self.total[groups] > 0).all(), "a requested group has no weight"
        pos = np.searchsorted(self.keys, groups + u, side="right")
        return self.members[np.minimum(pos, len(self.keys) - 1)]


def draw_rows(p: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One column index per row of a (n, k) non-negative weight matrix, drawn with those weights."""
    cum = np.cumsum(p, axis=1)
    u = rng.random(len(p)) * cum[:, -1]
    return np.minimum((cum <= u[:, None]).sum(axis=1), p.shape[1] - 1)


def _track_samplers(cat: Catalog, day: int) -> tuple[GroupSampler, GroupSampler, GroupSampler, GroupSampler]:
    """(tracks by genre, tracks by artist, artists by genre, all tracks) weighted by today's popularity:
    base popularity with a release boost that fades over a few days, so new tracks get played at once."""
    tracks = np.flatnonzero(~cat.is_episode)
    weight = cat.weight[tracks] * (1.0 + 4.0 * np.exp(-(day - cat.first_day[tracks]) / 2.0))
    artists = cat.artist[tracks]
    artist_weight = np.bincount(artists, weights=weight, minlength=len(cat.artist_genre))
    all_artists = np.arange(len(cat.artist_genre))
    return (GroupSampler(tracks, cat.genre[tracks], weight), GroupSampler(tracks, artists, weight),
            GroupSampler(all_artists, cat.artist_genre, artist_weight),
            GroupSampler(tracks, np.zeros_like(tracks), weight))


@dataclass
class Users:
    """Latent state of every user so far; user index i is user_id "u_{i+1:06d}"."""

    taste: np.ndarray  # (n, G) long-term genre mixture over music genres, rows sum to 1
    recent: np.ndarray  # (n, G) decayed share of recent music-session genres; zero before the first
    favourites: np.ndarray  # (n, FAVOURITES) artist index, -1 = empty slot
    podcast_affinity: np.ndarray  # (n,) chance that a session is a podcast session
    history: np.ndarray  # (n, HISTORY) recently played track indices, oldest first, -1 = empty
    history_len: np.ndarray  # (n,)
    follows: list[dict[int, int]]  # per user: followed show -> position of its next unplayed episode
    last_show: list[int]  # per user: the show of the last podcast session, -1 = none

    @classmethod
    def empty(cls, n_genres: int) -> Users:
        return cls(np.zeros((0, n_genres)), np.zeros((0, n_genres)), np.zeros((0, FAVOURITES), np.int64),
                   np.zeros(0), np.zeros((0, HISTORY), np.int64), np.zeros(0, np.int64), [], [])

    @property
    def n(self) -> int:
        return len(self.taste)


def add_users(users: Users, cat: Catalog, n: int, day: int, rng: np.random.Generator) -> None:
    """Append n new users: 2-3 dominant genres (popular genres more likely) plus a little of
    everything, 2-5 favourite artists from those genres, a podcast affinity and 0-3 followed shows."""
    n_genres, k = cat.n_music_genres, min(3, cat.n_music_genres)
    top = np.argsort(-(np.log(cat.genre_weight) + rng.gumbel(size=(n, n_genres))), axis=1)[:, :k]  # Gumbel top-k
    mix = rng.dirichlet(np.full(k, 1.5), size=n)
    if k == 3:
        mix[rng.random(n) < 0.5, 2] = 0.0  # half the users have two dominant genres, half three
    taste = 0.1 * rng.dirichlet(np.full(n_genres, 0.5), size=n)
    np.put_along_axis(taste, top, np.take_along_axis(taste, top, 1) + 0.9 * mix / mix.sum(1, keepdims=True), 1)

    _, _, artists_by_genre, _ = _track_samplers(cat, day)
    fav_genre = draw_rows(np.repeat(taste**2, FAVOURITES, axis=0), rng)  # squared: favourites come from the top genres
    favourites = artists_by_genre.sample(fav_genre, rng.random(n * FAVOURITES)).reshape(n, FAVOURITES)
    favourites[np.arange(FAVOURITES)[None, :] >= rng.integers(2, FAVOURITES + 1, n)[:, None]] = -1

    affinity = rng.beta(1.2, 4.0, n)
    n_follows = rng.integers(0, 4, n)
    p_show = cat.show_weight / cat.show_weight.sum()
    followed = rng.choice(len(p_show), n_follows.sum(), p=p_show)
    start_u, latest = rng.random(n_follows.sum()), rng.random(n_follows.sum()) < 0.5
    j = 0
    for m in n_follows.tolist():
        follows = {}
        for s, u, at_latest in zip(followed[j:j + m].tolist(), start_u[j:j + m].tolist(), latest[j:j + m].tolist()):
            follows.setdefault(s, _first_unplayed(len(cat.show_episodes[s]), u, at_latest))
        users.follows.append(follows)
        users.last_show.append(-1)
        j += m
    users.taste = np.concatenate([users.taste, taste])
    users.recent = np.concatenate([users.recent, np.zeros_like(taste)])
    users.favourites = np.concatenate([users.favourites, favourites])
    users.podcast_affinity = np.concatenate([users.podcast_affinity, affinity])
    users.history = np.concatenate([users.history, np.full((n, HISTORY), -1, np.int64)])
    users.history_len = np.concatenate([users.history_len, np.zeros(n, np.int64)])


def _first_unplayed(n_episodes: int, u: float, at_latest: bool) -> int:
    """Where a new follower starts: the latest episode, or somewhere in the back catalogue (a binge)."""
    return n_episodes - 1 if at_latest else int(u * n_episodes)


def simulate_day(cfg: GeneratorConfig, cat: Catalog, users: Users, day: int, start_ms: int,
                 first_new_user: int, rng: np.random.Generator) -> tuple[dict[str, np.ndarray], int]:
    """One day of listening. Returns the events as arrays sorted by ts (user, item: indices; etype:
    PLAY/SKIP/SAVE; ts: epoch ms inside the day; ms: ms_played) and the number of active users.
    Updates users' rotation, recent genres, podcast positions."""
    active = rng.random(users.n) < cfg.active_user_share
    if day > 0:
        active[first_new_user:] = True  # someone who signs up today listens today
    who = np.flatnonzero(active)
    s_user = np.repeat(who, 1 + rng.poisson(max(cfg.sessions_per_active_user - 1.0, 0.0), len(who)))
    n_sess = len(s_user)
    hour = np.searchsorted(np.cumsum(HOUR_WEIGHT) / HOUR_WEIGHT.sum(), rng.random(n_sess), side="right")
    s_start = hour * 3_600_000 + rng.integers(0, 3_600_000, n_sess)  # ms after midnight
    order = np.lexsort((s_start, s_user))  # a user's sessions in time order: podcasts continue in order
    s_user, s_start = s_user[order], s_start[order]

    # Every session gets music attributes; podcast sessions with nothing left to play fall back to them.
    by_genre, by_artist, artists_by_genre, everything = _track_samplers(cat, day)
    recent = users.recent[s_user]
    has_recent = recent.sum(1, keepdims=True) > 0
    taste = users.taste[s_user]
    s_genre = draw_rows(taste * (1 - MOMENTUM) + np.where(has_recent, recent, taste) * MOMENTUM, rng)
    s_artist = _session_artists(users.favourites[s_user], s_genre, cat, artists_by_genre, rng)
    s_len = rng.geometric(1.0 / max(cfg.mean_session_length, 1.0), n_sess)
    podcast = rng.random(n_sess) < users.podcast_affinity[s_user]
    pod_sess, pod_items = _podcast_sessions(cat, users, s_user, podcast, rng)
    music = np.ones(n_sess, bool)
    music[np.unique(pod_sess)] = False

    # Music slots: each slot independently plays from one of four sources (SOURCE_P).
    slot_sess = np.repeat(np.flatnonzero(music), s_len[music])
    slot_user, n_slots = s_user[slot_sess], len(slot_sess)
    source = np.searchsorted(np.cumsum(SOURCE_P), rng.random(n_slots) * SOURCE_P.sum(), side="right")
    source[(source == 2) & (users.history_len[slot_user] == 0)] = 1  # nothing to replay yet
    u = rng.random(n_slots)
    items = np.empty(n_slots, np.int64)
    for src, pick in ((0, lambda m: by_artist.sample(s_artist[slot_sess[m]], u[m])),
                      (1, lambda m: by_genre.sample(s_genre[slot_sess[m]], u[m])),
                      (2, lambda m: users.history[slot_user[m], (u[m] * users.history_len[slot_user[m]]).astype(int)]),
                      (3, lambda m: everything.sample(np.zeros(m.sum(), np.int64), u[m]))):
        mask = source == src
        items[mask] = pick(mask)

    # Skips are likelier off-taste; saves happen on strongly matching plays.
    taste = users.taste[slot_user]
    affinity = taste[np.arange(n_slots), cat.genre[items]] / taste.max(1)
    favourite = (users.favourites[slot_user] == cat.artist[items][:, None]).any(1)
    p_skip = (0.04 + 0.5 * (1.0 - affinity) ** 2) * np.where(source == 2, 0.3, 1.0)
    p_save = 0.05 * affinity**2 + 0.05 * favourite
    # Podcast slots: the listener chose the show, so skips and saves are rare.
    p_skip = np.concatenate([p_skip, np.full(len(pod_items), 0.05)])
    p_save = np.concatenate([p_save, np.full(len(pod_items), 0.03)])
    slot_sess, items = np.concatenate([slot_sess, pod_sess]), np.concatenate([items, pod_items])
    order = np.argsort(slot_sess, kind="stable")  # slots of one session, in play order
    slot_sess, items, p_skip, p_save = slot_sess[order], items[order], p_skip[order], p_save[order]

    n_slots, duration = len(items), cat.duration_ms[items]
    skip = rng.random(n_slots) < p_skip
    played = np.where(rng.random(n_slots) < 0.7, duration, (duration * rng.uniform(0.5, 1.0, n_slots)).astype(np.int64))
    ms = np.where(skip, np.minimum(rng.integers(1_500, 30_000, n_slots), duration), played)
    step = ms + rng.integers(200, 5_000, n_slots)  # the next item starts after this one plus a gap
    session_first = np.searchsorted(slot_sess, slot_sess, side="left")
    ends = np.cumsum(step)
    offset = ends - step - np.where(session_first > 0, ends[session_first - 1], 0)
    length = np.bincount(slot_sess, weights=step, minlength=n_sess).astype(np.int64)
    s_start = _lay_out_sessions(s_user, s_start, length)
    ts = start_ms + s_start[slot_sess] + offset
    save = ~skip & (rng.random(n_slots) < p_save)
    save_ts = ts[save] + (ms[save] * rng.uniform(0.3, 1.0, save.sum())).astype(np.int64)

    events = {
        "user": np.concatenate([s_user[slot_sess], s_user[slot_sess[save]]]),
        "item": np.concatenate([items, items[save]]),
        "etype": np.concatenate([np.where(skip, SKIP, PLAY), np.full(save.sum(), SAVE)]),
        "ts": np.concatenate([ts, save_ts]),
        "ms": np.concatenate([ms, np.zeros(save.sum(), np.int64)]),
    }
    inside = events["ts"] < start_ms + DAY_MS  # a session running past midnight is cut there
    order = np.argsort(events["ts"][inside], kind="stable")
    events = {k: v[inside][order] for k, v in events.items()}
    _remember(users, events, s_user[music], s_genre[music], cat)
    return events, len(who)


def _session_artists(favourites: np.ndarray, genres: np.ndarray, cat: Catalog,
                     artists_by_genre: GroupSampler, rng: np.random.Generator) -> np.ndarray:
    """The artist each session keeps returning to: usually one of the user's favourites in the
    session's genre (if any), else a popular artist of that genre."""
    in_genre = (favourites >= 0) & (cat.artist_genre[np.maximum(favourites, 0)] == genres[:, None])
    count = in_genre.sum(1)
    nth = (rng.random(len(genres)) * count).astype(np.int64)  # which of the matching favourites
    column = np.minimum((np.cumsum(in_genre, 1) <= nth[:, None]).sum(1), FAVOURITES - 1)
    favourite = favourites[np.arange(len(genres)), column]
    popular = artists_by_genre.sample(genres, rng.random(len(genres)))
    return np.where((count > 0) & (rng.random(len(genres)) < 0.7), favourite, popular)


def _podcast_sessions(cat: Catalog, users: Users, s_user: np.ndarray, podcast: np.ndarray,
                      rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Play 1-3 next unplayed episodes of a followed show per podcast session (the last show again,
    70%). A user with nothing left sometimes follows a popular show. Returns (session, item) per slot."""
    n_sess = len(s_user)
    n_episodes = np.minimum(rng.geometric(0.55, n_sess), 3)
    u_show, u_stay, u_discover, u_start = (rng.random(n_sess) for _ in range(4))
    p_show = cat.show_weight / cat.show_weight.sum()
    discover = rng.choice(len(p_show), n_sess, p=p_show)
    sess, played = [], []
    for i in np.flatnonzero(podcast).tolist():
        user = int(s_user[i])
        follows = users.follows[user]
        open_shows = [s for s, nxt in follows.items() if nxt < len(cat.show_episodes[s])]
        if not open_shows and u_discover[i] < 0.5 and int(discover[i]) not in follows:
            show = int(discover[i])
            follows[show] = _first_unplayed(len(cat.show_episodes[show]), u_start[i], u_start[i] < 0.5)
            open_shows = [show]
        if not open_shows:
            continue
        last = users.last_show[user]
        show = last if last in open_shows and u_stay[i] < 0.7 else open_shows[int(u_show[i] * len(open_shows))]
        take = cat.show_episodes[show][follows[show]:follows[show] + int(n_episodes[i])]
        follows[show] += len(take)
        users.last_show[user] = show
        sess += [i] * len(take)
        played += take
    return np.array(sess, np.int64), np.array(played, np.int64)


def _lay_out_sessions(s_user: np.ndarray, s_start: np.ndarray, length: np.ndarray) -> np.ndarray:
    """Push a user's sessions later so they do not overlap (sessions come sorted by user, start)."""
    starts = s_start.tolist()
    users, lengths = s_user.tolist(), length.tolist()
    for i in range(1, len(starts)):
        if users[i] == users[i - 1]:
            starts[i] = max(starts[i], starts[i - 1] + lengths[i - 1] + 60_000)
    return np.array(starts, np.int64)


def _remember(users: Users, events: dict[str, np.ndarray], music_users: np.ndarray,
              music_genres: np.ndarray, cat: Catalog) -> None:
    """End of day: today's played tracks join each user's rotation; today's session genres become
    the user's recent genres (which tomorrow's sessions lean towards)."""
    keep = (events["etype"] == PLAY) & ~cat.is_episode[events["item"]]
    user, item = events["user"][keep], events["item"][keep]
    order = np.argsort(user, kind="stable")  # stays in ts order within a user
    user, item = user[order], item[order]
    bounds = np.flatnonzero(np.diff(user)) + 1
    for u, tracks in zip(user[np.r_[0, bounds]].tolist() if len(user) else [], np.split(item, bounds)):
        merged = np.concatenate([users.history[u, :users.history_len[u]], tracks])[-HISTORY:]
        users.history[u, :len(merged)] = merged
        users.history_len[u] = len(merged)
    counts = np.zeros_like(users.recent)
    np.add.at(counts, (music_users, music_genres), 1.0)
    listened = counts.sum(1) > 0
    today = counts[listened] / counts[listened].sum(1, keepdims=True)
    users.recent[listened] = 0.3 * users.recent[listened] + 0.7 * today


def drift_tastes(users: Users, rng: np.random.Generator) -> None:
    """Tastes drift slowly: multiplicative noise, and a pull towards what the user played lately."""
    taste = users.taste * np.exp(0.1 * rng.standard_normal(users.taste.shape))
    has_recent = users.recent.sum(1, keepdims=True) > 0
    taste = np.where(has_recent, 0.95 * taste + 0.05 * users.recent, taste)
    users.taste = taste / taste.sum(1, keepdims=True)


def shift_tastes(users: Users, cat: Catalog, share: float, edit_share: float, day: int,
                 rng: np.random.Generator) -> list[tuple[int, int, bool]]:
    """A share of the users change taste today: each switches to a music genre from the less liked half
    of their own (taste 0.1 old + 0.9 new, recent sessions all new, 2-3 favourite artists of it). Returns
    (user index, new genre index, whether the user also says so in an edit) per shifted user."""
    n = int(round(share * users.n))
    if n == 0:
        return []
    chosen = np.sort(rng.choice(users.n, n, replace=False))
    half = max(1, cat.n_music_genres // 2)
    weakest = np.argsort(users.taste[chosen], axis=1, kind="stable")[:, :half]
    genre = weakest[np.arange(n), rng.integers(0, half, n)]
    new = np.zeros((n, cat.n_music_genres))
    new[np.arange(n), genre] = 1.0
    users.taste[chosen] = 0.1 * users.taste[chosen] + 0.9 * new
    users.recent[chosen] = new
    _, _, artists_by_genre, _ = _track_samplers(cat, day)
    favourites = artists_by_genre.sample(np.repeat(genre, FAVOURITES), rng.random(n * FAVOURITES)).reshape(n, FAVOURITES)
    favourites[np.arange(FAVOURITES)[None, :] >= rng.integers(2, 4, n)[:, None]] = -1
    users.favourites[chosen] = favourites
    edits = rng.random(n) < edit_share
    return [(int(u), int(g), bool(e)) for u, g, e in zip(chosen, genre, edits)]
