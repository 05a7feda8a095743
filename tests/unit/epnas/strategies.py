"""Hypothesis strategies shared by the core's property tests."""

from __future__ import annotations

import random

from hypothesis import strategies as st

from epnas.arch import Arch, random_arch
from epnas.morph import Action, insert_fields, max_positions
from epnas.space import SPACES

GROUPS = 4


def actions(space_name: str) -> st.SearchStrategy[Action]:
    """Any action the policy could emit (every index in range; Src1 over all N_l positions)."""
    space = SPACES[space_name]
    n_positions = max_positions(space)
    return st.builds(
        Action,
        scale_channel=st.tuples(*[st.integers(0, 2)] * GROUPS),
        scale_width=st.tuples(*[st.integers(0, 2)] * GROUPS),
        kind=st.integers(0, 2),
        position=st.integers(0, n_positions - 1),
        src2=st.integers(0, n_positions - 1),
        insert=st.fixed_dictionaries({name: st.integers(0, n - 1) for name, n in insert_fields(space)}),
    )


def starts(space_name: str) -> st.SearchStrategy[Arch]:
    """A random starting architecture of 1 to 6 layers (or branches)."""
    return st.builds(
        lambda seed, depth: random_arch(space_name, depth, random.Random(seed)),
        st.integers(0, 2**32 - 1),
        st.integers(1, 6),
    )
