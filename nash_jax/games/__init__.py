"""Preference games: the data every algorithm plays on."""

from nash_jax.games.core import (
    Game,
    expectation,
    make_game,
    preference_of,
    stack_games,
    win_rates,
)
from nash_jax.games.files import GameFileError, load_game
from nash_jax.games.generators import (
    FEATURE_GAMES,
    GENERATORS,
    REF_POLICIES,
    generate_game,
)
