"""Building blocks shared by the searching methods: gates on a graph's channel groups (`gates`), width spaces
(`widths`), fitting a decision into a budget (`budget_fit`), distributed searches (`dist`), resumable search
checkpoints (`checkpoint`) and an evolutionary search over integer genes (`evolution`)."""
