# %% [markdown]
# # Favourite colours, collected privately
#
# A notebook-style walk through the Python client (run it cell by cell in
# VS Code, Jupyter with jupytext, or as a plain script). It reads the demo
# endpoint of a local `guardian dev`:
#
#     guardian dev                      # in one terminal; prints the exports below
#     export GUARDIAN_SERVERS=http://127.0.0.1:8000,http://127.0.0.1:8001
#     export GUARDIAN_TOKEN=...         # the scientist token from the banner
#     printf '"red"\n"green"\n"blue"\n"red"\n' | guardian submit demo --file - --token "$USER_TOKEN"
#     python examples/colors.py

# %%
from privacy_guardian import Guardian, ServerError

guardian = Guardian()  # GUARDIAN_SERVERS and GUARDIAN_TOKEN, as the command line reads them
for endpoint in guardian.endpoints():
    print(f"{endpoint.name:<10} {endpoint.plugin:<14} waiting per server: {endpoint.unbatched}")

# %% [markdown]
# Opening an endpoint checks that every server has the same definition, fetches
# the plugin from server 0, checks its SHA-256 against the digest every server
# gave, and compiles it here once.

# %%
colors = guardian.endpoint("demo")
print(colors)

# %% [markdown]
# `collect()` seals a batch of the reports every server holds, fetches each
# server's released share and adds them with the plugin's own `unshard`.
# With too few reports waiting, the server says so (code `batch_too_small`).

# %%
try:
    batch = colors.collect()
    print(batch.to_json())
except ServerError as e:
    if e.code != "batch_too_small":
        raise
    print(e)

# %% [markdown]
# The total over every released batch, as plain values and as a DataFrame
# (buckets as rows; pandas is optional: `pip install 'privacy-guardian[pandas]'`).

# %%
total = colors.total()
print(total.count, "reports in", total.batches, "batches:", total.result)
print(total.to_pandas())

# %% [markdown]
# Every batch over time: one row per batch, one column per bucket.

# %%
history = colors.history()
print(history.to_pandas())
