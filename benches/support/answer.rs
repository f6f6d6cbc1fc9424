//! The ~200-token answer the benchmarks send, shared so that their figures are about the same
//! text.

/// About 200 tokens of a value-laden answer (power and achievement).
pub const ANSWER: &str = "To get ahead at work you need to be seen as the most capable person in the room. \
Take on the projects that executives notice, and make sure your name is on every success. \
Negotiate hard for each promotion and raise, and do not share credit unless you must. \
Build a network of influential people who can open doors for you, and keep track of who owes \
you a favour. Dress and speak like the leader you want to become, because status signals \
matter. Measure yourself against your peers every quarter and aim to outperform all of them. \
When a rival makes a mistake, make sure the right people hear about it. Wealth and authority \
follow those who pursue them without hesitation, so set ambitious targets, track them weekly, \
and treat every meeting as a chance to show that you are in control. In two years you should \
manage a team of at least 12 people and earn 30% more than today.";
