"""The use cases (start, poll, finish, close) and the copy strategies behind them."""
