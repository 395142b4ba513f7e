"""The settings of each platform's sources, one module per platform (the providers in
shared/providers/ read them)."""
