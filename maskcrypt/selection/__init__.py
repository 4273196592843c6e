"""The pure rules of the method: Table 1 and Table 2, the race step, the decision, and the attackers' table.

Counts in, tables out: nothing here touches Ray, a model or a file.
"""
