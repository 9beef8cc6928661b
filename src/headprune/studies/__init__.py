"""Studies of the method rather than the method: code that measures how a part of it behaves on
committed runs (`replay`: racing replayed on a complete grid, `headprune replay`). Nothing of the
method imports from here."""
