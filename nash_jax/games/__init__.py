"""Preference games: the data every algorithm plays on."""

from nash_jax.games.core import Game
from nash_jax.games.core import expectation
from nash_jax.games.core import make_game
from nash_jax.games.core import preference_of
from nash_jax.games.core import stack_games
from nash_jax.games.core import win_rates
from nash_jax.games.files import GameFileError
from nash_jax.games.files import load_game
from nash_jax.games.generators import GENERATORS
from nash_jax.games.generators import REF_POLICIES
from nash_jax.games.generators import generate_game
