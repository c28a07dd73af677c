"""The gateway's core vocabulary: signals, events, stored records, backoff, errors,
config building blocks and the protocols components speak to each other.

It imports nothing else of the project and no protocol library; every other
package (drivers, buffer, sinks, recognizers, the app) imports from here.
"""
