"""Templates and word lists from which `p2l simulate` writes natural-looking prompts.

Each category has templates whose ``{slot}`` fields are filled from ``SLOTS`` (a tuple of
phrases, or a ``range`` of integers), follow-up turns, and openers for the assistant's
answers. The vocabulary of each category is its own (functions and stack traces for code,
tables and joins for SQL, equations for math, ...), so a sentence-embedding model can tell
the categories apart. Difficulty phrases are appended to English prompts: they are the
visible prompt-level feature the simulated truth depends on besides the category.
"""

from __future__ import annotations

CATEGORY_NAMES = (
    "code",
    "math",
    "creative_writing",
    "translation",
    "casual_chat",
    "sql",
    "science",
    "business_writing",
)

# How often each category is asked, roughly as in public arena data (normalised when a
# subset of categories is simulated).
CATEGORY_SHARE = {
    "code": 0.18,
    "math": 0.10,
    "creative_writing": 0.12,
    "translation": 0.08,
    "casual_chat": 0.20,
    "sql": 0.08,
    "science": 0.13,
    "business_writing": 0.11,
}

EASY_PHRASES = (
    "Keep it short and simple.",
    "Just a quick answer is fine.",
    "Nothing fancy, please.",
    "A rough answer is enough.",
)

HARD_PHRASES = (
    "Be thorough and precise: this matters a lot.",
    "I want an expert-level answer with all the details.",
    "Take your time, think it through carefully, and double-check everything.",
    "Please be rigorous and don't skip any step.",
)

# Difficulty phrases that fit only some categories, added to the generic ones.
EASY_EXTRA: dict[str, tuple[str, ...]] = {
    "code": ("I'm a beginner, so please keep it simple.",),
    "math": ("I'm not good at math, so keep it simple.",),
    "sql": ("I'm new to SQL, so please keep it simple.",),
    "science": ("Explain it like I'm twelve.",),
}
HARD_EXTRA: dict[str, tuple[str, ...]] = {
    "code": ("This is for production, so it must be correct and efficient.",
             "Handle every edge case."),
    "math": ("Show every step and double-check your answer.",),
    "sql": ("The table has a billion rows, so performance matters.",),
    "science": ("Go into the underlying physics and cite the key experiments.",),
    "creative_writing": ("Make it literary and surprising, with layered imagery.",),
    "translation": ("Preserve every nuance of tone and register.",),
    "business_writing": ("It's for a very important client, so make it polished and precise.",),
}

OPENING_PHRASES = ("", "", "", "Hi! ", "Hey, ", "Quick question: ", "Please help: ", "Hello. ")

GREETINGS = (
    "hi",
    "hello",
    "hey there!",
    "how are you today?",
    "what's up?",
    "good morning!",
)

# Casual chat in other languages: (language as arena data names it, template).
FOREIGN_CHAT = (
    ("Spanish", "Hola, ¿qué me recomiendas hacer este fin de semana en {es_city}?"),
    ("Spanish", "Cuéntame un chiste sobre {es_topic}."),
    ("Spanish", "¿Cuál es tu comida favorita y por qué?"),
    ("German", "Kannst du mir ein gutes Buch für den Urlaub empfehlen?"),
    ("German", "Erzähl mir einen Witz über {de_topic}."),
    ("German", "Was kann man an einem Regentag in {de_city} unternehmen?"),
    ("French", "Salut ! Tu peux me conseiller un film pour ce soir ?"),
    ("French", "Quelle est la meilleure façon d'apprendre {fr_language} rapidement ?"),
    ("Chinese", "你好！你能给我推荐几本好看的{zh_genre}吗？"),
    ("Chinese", "周末在家可以做些什么有趣的事情？"),
    ("Chinese", "给我讲一个关于{zh_animal}的笑话。"),
    ("Russian", "Привет! Посоветуй, пожалуйста, хороший фильм на вечер."),
    ("Russian", "Как лучше всего выучить {ru_language} за один год?"),
    ("Portuguese", "Olá! Quais são os melhores lugares para visitar em {pt_city}?"),
)

TEMPLATES: dict[str, tuple[str, ...]] = {
    "code": (
        "Write a {lang} function that {code_task}.",
        "How do I write a function in {lang} that {code_task}?",
        "My {lang} program crashes with {code_error} when I {code_action}. What am I doing wrong?",
        "Can you explain {code_concept} in {lang} with a short code example?",
        "What is the idiomatic way to {code_action} in {lang}?",
        "Review my {lang} implementation of a function that {code_task} and suggest improvements.",
        "Implement a class in {lang} that {code_class}.",
        "I'm using {library}. How can I {code_action} without blocking the main thread?",
        "Port this {lang} snippet to {lang2}: a loop that {code_task}.",
        "Why does my unit test in {lang} fail with {code_error} only on the CI server?",
        "Write a command-line script in {lang} that {code_script}.",
    ),
    "math": (
        "Solve for x: {n_small}x + {n_mid} = {n_big}.",
        "What is the derivative of {math_function}?",
        "Compute the definite integral of {math_function} from 0 to {n_small}.",
        "Prove that {math_statement}.",
        "A train leaves at {n_speed} km/h and a second train follows {n_mid} minutes later at "
        "{n_speed2} km/h. How long until the second train catches up?",
        "If I invest ${n_money} at {n_small}% annual interest compounded monthly, how much "
        "will I have after {n_mid} years?",
        "What is the probability of getting at least {n_small} heads in {n_mid} fair coin flips?",
        "Find the eigenvalues of the matrix [[{n_small}, {n_mid}], [{n_mid}, {n_small}]].",
        "How many ways can {n_mid} people be seated around a round table?",
        "Is {n_money} a prime number? Show how to check it.",
        "Find the limit of {math_function} divided by x as x approaches 0.",
        "Solve the system of equations: {n_small}x + y = {n_mid} and x - {n_small}y = {n_big}.",
    ),
    "creative_writing": (
        "Write a {form} about {subject} in the style of {style}.",
        "Write the opening paragraph of a {genre} novel set in {setting}.",
        "Give me {n_small} creative names for {thing_to_name}.",
        "Write a {tone} {form} for my {relative}'s {occasion}.",
        "Continue this story: \"{story_start}\"",
        "Write a dialogue between {character} and {character2} about {subject}.",
        "Write a {form} from the point of view of {character}.",
        "Describe {setting} at dawn in vivid, poetic language.",
    ),
    "translation": (
        "Translate the following sentence into {target_language}: \"{en_sentence}\"",
        "How do you say \"{en_phrase}\" in {target_language}?",
        "Translate this into English, please: {foreign_sentence}",
        "Please translate my message into {target_language} and keep the tone formal: "
        "\"{en_sentence}\"",
        "{grammar_question}",
        "What is the most natural way to translate \"{en_phrase}\" into {target_language}? "
        "Give a literal and an idiomatic version.",
        "Translate \"{en_sentence}\" into {target_language} and {target_language2}.",
    ),
    "casual_chat": (
        "What should I do this weekend if I like {hobby}?",
        "Can you recommend a good {media} for a rainy evening?",
        "I'm feeling a bit {mood} today. Any ideas to cheer me up?",
        "What's your favorite {favorite_thing} and why?",
        "Tell me a fun fact about {animal}.",
        "Tell me a joke about {joke_topic}.",
        "What would you do if you could {wish} for a day?",
        "Do you think {opinion}?",
        "Give me some tips for {life_task}.",
        "I just got back from {trip}. Ask me anything about it!",
    ),
    "sql": (
        "Write a SQL query that {sql_task} from the {table} table.",
        "How do I {sql_action} in {database}?",
        "Why is my {database} query with a LEFT JOIN on {table} returning duplicate rows?",
        "Optimize this query: SELECT * FROM {table} WHERE {column} LIKE '%{sql_word}%' "
        "ORDER BY created_at;",
        "Explain the difference between {sql_pair} in SQL.",
        "Design a database schema for {app_idea} and write the CREATE TABLE statements.",
        "In {database}, write a query on the {table} table that {sql_task}.",
        "My {database} query that joins {table} and {table2} on {column} is very slow. "
        "Which indexes should I add?",
    ),
    "science": (
        "Explain {phenomenon} in simple terms.",
        "What is the difference between {science_pair}?",
        "How does {device} work?",
        "Could humans survive on {celestial_body} with today's technology?",
        "What would happen if {hypothetical}?",
        "Why {science_why}?",
        "What is the current scientific consensus on {science_topic}?",
    ),
    "business_writing": (
        "Draft a {email_kind} email to {recipient} about {business_topic}.",
        "Write a cover letter for a {job} position at {company}.",
        "Outline a presentation on {business_theme} for our leadership team.",
        "Write a LinkedIn post announcing {announcement}.",
        "Help me write a {business_doc} for {business_context}.",
        "Give me a SWOT analysis for {business_context} entering {market}.",
        "Rewrite this sentence for a professional report: \"{casual_sentence}\"",
    ),
}

FOLLOW_UPS: dict[str, tuple[str, ...]] = {
    "code": (
        "Can you add comments to that code?",
        "Now write unit tests for it.",
        "What is the time complexity of your solution?",
        "Can you make it work for an empty input too?",
    ),
    "math": (
        "Can you check that answer another way?",
        "Explain the second step in more detail.",
        "What if the numbers were doubled?",
    ),
    "creative_writing": (
        "Make it rhyme.",
        "Can you make it shorter and darker?",
        "Now give it a happy ending.",
    ),
    "translation": (
        "Is that formal or informal?",
        "How would you pronounce it?",
        "Can you give me a more casual version?",
    ),
    "casual_chat": (
        "Haha, tell me another one.",
        "Why do you think that?",
        "Thanks! Anything else?",
    ),
    "sql": (
        "How would this look in a window function instead?",
        "Can you explain the query plan for that?",
        "Now make it return zero for months with no orders.",
    ),
    "science": (
        "Can you give an everyday analogy?",
        "What experiment showed that?",
        "Explain it to a ten-year-old.",
    ),
    "business_writing": (
        "Make it a bit more formal.",
        "Shorten it to three sentences.",
        "Add a clear call to action at the end.",
    ),
}

ANSWER_OPENERS: dict[str, tuple[str, ...]] = {
    "code": (
        "Sure! Here's a straightforward implementation.",
        "The problem comes from how the loop mutates the collection.",
        "Here is an idiomatic version with a short explanation.",
    ),
    "math": (
        "Let's work through it step by step.",
        "We can solve this by isolating the variable.",
        "Here is a short derivation.",
    ),
    "creative_writing": (
        "Here's a piece I wrote for you.",
        "What a lovely idea! Here it is.",
        "Here's my take on it.",
    ),
    "translation": (
        "Here is the translation.",
        "A natural way to say it would be the following.",
        "Sure, here it is, with a note on tone.",
    ),
    "casual_chat": (
        "Great question!",
        "Happy to chat about that.",
        "Oh, that's a fun one.",
    ),
    "sql": (
        "Here's a query that does it.",
        "You can do this with a GROUP BY and an aggregate.",
        "The duplicates come from the join condition.",
    ),
    "science": (
        "In short, it comes down to a few physical principles.",
        "Here's a simple explanation.",
        "Scientists explain it like this.",
    ),
    "business_writing": (
        "Here's a draft you can adapt.",
        "Sure, here is a professional version.",
        "Below is a concise draft.",
    ),
}

ANSWER_CLOSERS = (
    "Let me know if you want more detail.",
    "I hope this helps!",
    "Feel free to ask follow-up questions.",
    "Tell me if you'd like a different approach.",
    "",
)

SLOTS: dict[str, tuple[str, ...] | range] = {
    # ----------------------------------------------------------------- numbers
    "n_small": range(2, 10),
    "n_mid": range(10, 60),
    "n_big": range(60, 500),
    "n_speed": range(40, 90),
    "n_speed2": range(90, 160),
    "n_money": range(1000, 20000),
    # -------------------------------------------------------------------- code
    "lang": (
        "Python", "JavaScript", "TypeScript", "Rust", "Go", "Java", "C++", "C#", "Kotlin",
        "Swift", "Ruby", "PHP", "Bash", "Scala", "Haskell",
    ),
    "lang2": ("Python", "Rust", "Go", "TypeScript", "Java", "C++", "Julia"),
    "code_task": (
        "checks whether a string is a palindrome",
        "merges two sorted lists into one sorted list",
        "removes duplicates from a list while keeping the order",
        "parses a date string in ISO 8601 format",
        "finds the longest common prefix of a list of strings",
        "flattens a nested list of arbitrary depth",
        "counts the frequency of each word in a text file",
        "validates an email address",
        "computes the nth Fibonacci number with memoization",
        "reverses a linked list in place",
        "finds all anagrams of a word in a dictionary",
        "converts a Roman numeral to an integer",
        "groups a list of records by a key",
        "retries an HTTP request with exponential backoff",
        "splits a list into chunks of a given size",
        "returns the k most common elements of an array",
        "checks whether a binary tree is balanced",
        "debounces a callback",
        "reads a CSV file and sums one column",
        "generates all permutations of a string",
    ),
    "code_error": (
        "a KeyError", "a NullPointerException", "a segmentation fault",
        "'undefined is not a function'", "a borrow checker error",
        "an index out of range panic", "a stack overflow", "a type mismatch error",
        "a deadlock", "an unhandled promise rejection", "a ConcurrentModificationException",
    ),
    "code_action": (
        "read a large CSV file", "call an API in a loop", "sort a list of objects by two fields",
        "parse a JSON response", "spawn several threads", "update a dictionary while iterating "
        "over it", "connect to a database", "upload a file", "cache expensive function calls",
        "stream a large file line by line",
    ),
    "code_concept": (
        "recursion", "closures", "async/await", "generics", "dependency injection",
        "memoization", "the visitor pattern", "mocking in unit tests", "decorators",
        "iterators and generators", "pattern matching", "ownership and borrowing",
        "goroutines and channels", "immutability",
    ),
    "library": (
        "pandas", "React", "Django", "Flask", "NumPy", "Express", "Spring Boot", "Tokio",
        "FastAPI", "PyTorch", "Node.js streams", "asyncio",
    ),
    "code_class": (
        "implements an LRU cache with a fixed capacity",
        "represents a bank account with deposits and withdrawals",
        "parses command-line arguments",
        "implements a thread-safe queue",
        "models a deck of playing cards that can be shuffled",
        "keeps a running median of a stream of numbers",
        "implements a simple rate limiter",
    ),
    "code_script": (
        "renames all photos in a folder by the date they were taken",
        "downloads a web page and prints every link on it",
        "watches a folder and prints new files",
        "converts a JSON file to CSV",
        "finds the largest files under a directory",
    ),
    # -------------------------------------------------------------------- math
    "math_function": (
        "x^3 * sin(x)", "e^(2x) / (1 + x^2)", "ln(x^2 + 1)", "sqrt(x) * cos(x)", "tan(3x)",
        "x^2 * e^(-x)", "arctan(x) / x", "(x^2 - 1) / (x + 2)", "sin(x)^2", "x * ln(x)",
    ),
    "math_statement": (
        "the square root of 2 is irrational",
        "there are infinitely many prime numbers",
        "the sum of the first n odd numbers is n^2",
        "every bounded monotone sequence of real numbers converges",
        "the product of two consecutive integers is even",
        "a graph with n vertices and more than n - 1 edges contains a cycle",
        "the angles of a triangle add up to 180 degrees",
        "n^3 - n is divisible by 6 for every integer n",
    ),
    # -------------------------------------------------------- creative writing
    "form": (
        "poem", "haiku", "sonnet", "short story", "limerick", "song", "fairy tale",
        "monologue", "free-verse poem",
    ),
    "subject": (
        "a lighthouse keeper who falls in love with the sea",
        "a robot learning to paint",
        "the last day of summer",
        "a cat who secretly rules a small village",
        "autumn in an old city",
        "a dragon who is afraid of fire",
        "two strangers stuck in an elevator",
        "a time traveler who keeps missing breakfast",
        "the first snow of the year",
        "an old piano in an empty house",
        "a friendship between a crow and a scarecrow",
    ),
    "style": (
        "Edgar Allan Poe", "a noir detective novel", "a children's picture book",
        "Shakespeare", "a sports commentator", "Dr. Seuss", "an epic fantasy saga",
        "a Victorian love letter", "a nature documentary narrator",
    ),
    "genre": (
        "science fiction", "mystery", "fantasy", "romance", "horror", "historical",
        "post-apocalyptic", "coming-of-age",
    ),
    "setting": (
        "a floating city above the clouds", "a small fishing village in Norway",
        "Tokyo in the year 2150", "a haunted boarding school", "a desert caravan",
        "a space station orbiting Jupiter", "Paris during the 1920s", "an enchanted forest",
    ),
    "thing_to_name": (
        "a fantasy tavern", "a coffee shop run by cats", "a pirate ship", "a spaceship",
        "a dragon", "a detective agency", "a magical sword", "a rock band",
    ),
    "tone": ("heartfelt", "funny", "short and sweet", "poetic", "cheerful"),
    "relative": ("sister", "best friend", "grandfather", "colleague", "mom", "husband"),
    "occasion": ("birthday", "wedding", "retirement party", "graduation", "anniversary"),
    "story_start": (
        "The door had been locked for a hundred years, until tonight.",
        "Nobody in town remembered the day the river started flowing backwards.",
        "She found the letter inside a library book, addressed to her.",
        "The last train of the night stopped at a station that wasn't on the map.",
        "When the robots went on strike, the city fell silent.",
    ),
    "character": (
        "a grumpy wizard", "a curious child", "a retired astronaut", "a talking fox",
        "a nervous ghost", "a medieval knight", "an overworked barista",
    ),
    "character2": (
        "a wise old tree", "a lost alien", "a pirate captain", "a shy librarian",
        "a mischievous robot", "a famous chef",
    ),
    # ------------------------------------------------------------- translation
    "target_language": (
        "French", "Spanish", "German", "Italian", "Japanese", "Chinese", "Portuguese",
        "Korean", "Russian", "Arabic", "Dutch", "Turkish",
    ),
    "target_language2": ("French", "Spanish", "German", "Japanese", "Hindi", "Polish"),
    "en_sentence": (
        "The meeting has been moved to Thursday afternoon.",
        "Could you tell me where the nearest train station is?",
        "I would like to book a table for two at eight o'clock.",
        "Thank you so much for your help with the project.",
        "The weather is beautiful today, let's go for a walk.",
        "Please send me the invoice by the end of the week.",
        "I'm allergic to peanuts, does this dish contain any?",
        "We apologize for the delay in shipping your order.",
        "My flight was cancelled and I need a hotel for tonight.",
        "Happy birthday, I hope all your wishes come true!",
    ),
    "en_phrase": (
        "break a leg", "it's raining cats and dogs", "I miss you", "nice to meet you",
        "where is the bathroom", "the early bird catches the worm", "cheers", "see you later",
        "I'm just looking, thanks",
    ),
    "foreign_sentence": (
        "« Je voudrais réserver une chambre pour trois nuits. »",
        "„Wir treffen uns morgen um neun Uhr vor dem Bahnhof.“",
        "«¿Podrías ayudarme a encontrar mis llaves?»",
        "「この近くに美味しいラーメン屋はありますか？」",
        "“我明天要去北京出差，下周一回来。”",
        "«Non vedo l'ora di rivederti la prossima estate.»",
        "«Где находится ближайшая аптека?»",
        "“Obrigado pela sua paciência e compreensão.”",
    ),
    "grammar_question": (
        "What is the difference between 'ser' and 'estar' in Spanish?",
        "When do I use the subjunctive in French?",
        "How do the German cases work after prepositions like 'mit' and 'für'?",
        "What is the difference between 'wa' and 'ga' in Japanese?",
        "When should I use 'por' versus 'para' in Spanish?",
        "How are measure words used in Mandarin Chinese?",
    ),
    # ------------------------------------------------------------ casual chat
    "hobby": (
        "hiking", "board games", "cooking", "photography", "reading mysteries", "cycling",
        "gardening", "live music", "painting", "video games",
    ),
    "media": ("movie", "book", "podcast", "board game", "TV series", "album"),
    "mood": ("down", "bored", "stressed", "lonely", "unmotivated", "restless"),
    "favorite_thing": ("season", "food", "holiday", "color", "city", "movie"),
    "animal": (
        "octopuses", "penguins", "crows", "elephants", "sloths", "honey bees", "axolotls",
        "owls", "dolphins",
    ),
    "joke_topic": (
        "programmers", "cats", "coffee", "Mondays", "accountants", "pirates", "vegetables",
    ),
    "wish": ("fly", "become invisible", "talk to animals", "travel back in time", "read minds"),
    "opinion": (
        "pineapple belongs on pizza",
        "cats make better pets than dogs",
        "it's rude to recline your seat on a plane",
        "breakfast is the most important meal of the day",
        "books are better than their movie adaptations",
    ),
    "life_task": (
        "sleeping better", "making friends in a new city", "staying motivated to exercise",
        "planning a cheap trip to Japan", "keeping houseplants alive", "waking up earlier",
    ),
    "trip": ("a week in Lisbon", "a camping trip", "a road trip through Scotland", "Iceland"),
    "es_city": ("Madrid", "Barcelona", "Sevilla", "Buenos Aires", "Ciudad de México"),
    "es_topic": ("gatos", "programadores", "el fútbol", "los lunes"),
    "de_topic": ("Katzen", "Programmierer", "die Bahn", "Bürokratie"),
    "de_city": ("Berlin", "München", "Hamburg", "Wien"),
    "fr_language": ("l'anglais", "l'espagnol", "le japonais", "l'allemand"),
    "zh_genre": ("科幻小说", "历史书", "推理小说", "漫画"),
    "zh_animal": ("熊猫", "猫", "程序员", "兔子"),
    "ru_language": ("английский", "немецкий", "китайский", "испанский"),
    "pt_city": ("Lisboa", "Porto", "Rio de Janeiro", "São Paulo"),
    # -------------------------------------------------------------------- SQL
    "sql_task": (
        "returns the top 5 customers by total order value",
        "finds duplicate email addresses",
        "counts orders per month for the last year",
        "computes a running total of sales per region",
        "lists employees who earn more than their manager",
        "finds users who signed up but never placed an order",
        "returns the second highest salary in each department",
        "calculates the average session length per day",
        "deletes rows older than 90 days",
    ),
    "table": ("orders", "customers", "employees", "transactions", "events", "products", "users"),
    "table2": ("order_items", "payments", "departments", "sessions", "invoices"),
    "column": ("customer_id", "email", "name", "status", "product_id", "region"),
    "sql_word": ("smith", "pending", "gmail", "refund", "test"),
    "sql_action": (
        "create an index on two columns", "write a recursive CTE to walk an org chart",
        "pivot rows into columns", "upsert a row if it already exists",
        "delete duplicate rows but keep the newest one", "add a foreign key to an existing table",
        "paginate results efficiently", "store and query JSON columns",
    ),
    "database": ("PostgreSQL", "MySQL", "SQLite", "SQL Server", "BigQuery", "Snowflake"),
    "sql_pair": (
        "WHERE and HAVING", "INNER JOIN and LEFT JOIN", "UNION and UNION ALL",
        "a clustered and a non-clustered index", "RANK() and DENSE_RANK()",
        "a view and a materialized view", "DELETE and TRUNCATE",
    ),
    "app_idea": (
        "a library lending system", "an online bookstore", "a ride-sharing app",
        "a school timetable", "a restaurant reservation service", "a fitness tracking app",
    ),
    # ---------------------------------------------------------------- science
    "phenomenon": (
        "how vaccines train the immune system", "why the sky is blue", "how black holes form",
        "photosynthesis", "quantum entanglement", "plate tectonics", "how CRISPR edits genes",
        "the greenhouse effect", "how batteries store energy", "special relativity",
        "how the tides work", "natural selection",
    ),
    "science_pair": (
        "a virus and a bacterium", "weather and climate", "mitosis and meiosis",
        "nuclear fission and fusion", "speed and velocity", "an atom and a molecule",
        "DNA and RNA",
    ),
    "device": (
        "a microwave oven", "GPS", "an MRI scanner", "a refrigerator",
        "noise-cancelling headphones", "a solar panel", "a nuclear reactor", "a touchscreen",
    ),
    "celestial_body": ("Mars", "Venus", "the Moon", "Europa", "Titan"),
    "hypothetical": (
        "the Moon disappeared", "the Earth stopped spinning", "all the ice on Earth melted",
        "humans could photosynthesize", "gravity were twice as strong",
    ),
    "science_why": (
        "does ice float on water", "do we have seasons", "do cats purr",
        "is the ocean salty", "do onions make us cry", "do stars twinkle",
    ),
    "science_topic": (
        "dark matter", "the health effects of intermittent fasting", "the origin of the Moon",
        "microplastics in drinking water", "the causes of the ice ages",
    ),
    # ------------------------------------------------------- business writing
    "email_kind": ("polite", "firm but friendly", "follow-up", "formal", "short"),
    "recipient": (
        "my manager", "a client", "the whole team", "a supplier", "a recruiter",
        "our investors",
    ),
    "business_topic": (
        "a delayed project deadline", "asking for a raise", "a missed invoice payment",
        "rescheduling our quarterly review", "declining a job offer",
        "introducing our new pricing", "a product recall", "onboarding a new colleague",
    ),
    "job": (
        "data analyst", "marketing manager", "software engineer", "project manager",
        "customer success", "sales representative",
    ),
    "company": (
        "a renewable energy startup", "a large bank", "a video game studio",
        "a nonprofit organization", "a logistics company",
    ),
    "business_theme": (
        "our third-quarter results", "entering the Asian market", "remote work policy",
        "customer churn", "the new product roadmap",
    ),
    "announcement": (
        "my new job", "our company's Series A funding", "the launch of our mobile app",
        "a promotion to team lead", "our tenth anniversary",
    ),
    "business_doc": (
        "one-page business plan", "project proposal", "press release", "product description",
        "meeting agenda", "job description",
    ),
    "business_context": (
        "a small bakery that delivers", "a mobile app for dog walkers",
        "a B2B analytics startup", "a family-run hotel", "an online language school",
    ),
    "market": ("Germany", "the US healthcare market", "Southeast Asia", "the luxury segment"),
    "casual_sentence": (
        "we kinda messed up the numbers last month",
        "the new tool is super slow and everybody hates it",
        "sales went way up after we changed the website",
        "the client was pretty annoyed about the delay",
    ),
}

# Parts of the fictional model names: a stem, a version, and a size tag that grows with
# the model's general strength.
NAME_STEMS = (
    "aster", "borealis", "cinder", "dune", "ember", "fjord", "garnet", "helix", "iris",
    "juniper", "kestrel", "lumen", "meridian", "nova", "onyx", "pico", "quartz", "raven",
    "sierra", "tundra", "umbra", "vega", "willow", "xenon", "yarrow", "zephyr",
)
NAME_VERSIONS = ("1", "1.5", "2", "2.5", "3", "3.1", "3.5", "4")
SIZE_TAGS = ("mini", "3b", "7b", "8b", "13b", "34b", "70b", "large", "pro", "ultra")

# Specialities: a tag in the model's name and the categories it is better at.
SPECIALITIES = {
    "coder": ("code", "sql"),
    "math": ("math",),
    "writer": ("creative_writing", "business_writing"),
    "polyglot": ("translation",),
    "chat": ("casual_chat",),
}
