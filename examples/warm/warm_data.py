"""The quickstart's own data: a "reply warmly and helpfully" task, built here (no hub, no downloads).

The quickstart's judges (`labelers.warm_and_helpful`, and the simulated human built on it) want replies that are kind
and useful.
For SFT, reward modelling and PPO to have something real to learn, this module builds, deterministically from a
seed and with the standard library only:

  prompts         {prompt, topic}: everyday requests to a friendly assistant, 45 topics (cooking, sleep, budgeting,
                  moving city, public speaking, ...), each combining concrete requests, personal contexts and,
                  for about 45% of them, a mild negative feeling (stress, loneliness, frustration), so that a
                  warm reply really differs from a cold one;
  demonstrations  {prompt, response}: a warm opener suited to the prompt (an empathetic one when the user is
                  low), 2-3 correct, topic-specific tips, and a warm close, in one of several layouts (prose,
                  numbered, bullets, "First ... Also ..."), 40-90 words.

Every prompt is unique, and each topic's prompts are split three ways: `sft` (demonstrations), `train` (prompts
for preference labeling and PPO) and `eval` (held out from both; their demonstrations are written too, for the
SFT eval loss). So held-out numbers are measured on prompts no stage trained on, from the same distribution.

Departures from a real dataset: the tips are per topic, not per request, so a reply answers the topic of its
question rather than every detail of it; and prompts and replies are template-made, so they are far less varied
than human text. They are correct and varied enough to separate a warm-and-helpful policy from a cold one.

    python -m examples.warm.warm_data OUT_DIR [--seed 0]   # writes the JSONL files listed in FILES
"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Topic:
    """One everyday theme: how users ask about it, who they are, how they feel, and what actually helps."""

    name: str
    subject: str  # a gerund/noun phrase without pronouns: "about {subject}", "help with {subject}"
    asks: tuple[str, ...]  # full questions, starting with a question word (never "I")
    helps: tuple[str, ...]  # verb phrases: "Can you help me {help}?"
    contexts: tuple[str, ...]  # first-person clauses, no final period
    worries: tuple[str, ...]  # first-person clauses carrying a mild negative feeling, no final period
    tips: tuple[str, ...]  # concrete, correct, imperative sentences (at least 4)


# ---------------------------------------------------------------- topics

TOPICS: tuple[Topic, ...] = (
    Topic(
        "weeknight cooking", "cooking dinner at home",
        ("How can I cook quick, tasty dinners on weeknights?", "What are some easy meals for a beginner cook?",
         "How do I stop ordering takeout every night?"),
        ("cook simple dinners after work", "get more confident in the kitchen", "plan a week of easy meals"),
        ("I just moved into my first apartment", "I get home from work pretty late", "I'm cooking for two kids"),
        ("I keep burning things and it's discouraging", "I feel a bit useless in the kitchen"),
        ("Keep a few staples on hand, like rice, pasta, eggs, canned beans and frozen vegetables.",
         "Try one-pan dinners: chop vegetables and chicken, toss with oil and spices, and roast at 200C.",
         "Cook a double batch on Sunday so you have easy leftovers for busy nights.",
         "Learn three reliable recipes first, then vary them with different sauces and spices.",
         "Read the whole recipe and prep your ingredients before you turn on the heat."),
    ),
    Topic(
        "baking bread", "baking bread",
        ("How do I bake my first loaf of bread?", "Why is my homemade bread so dense?",
         "What's the easiest bread for a beginner to bake?"),
        ("bake a soft sandwich loaf", "get my bread to rise properly", "start baking bread at home"),
        ("I've always wanted to bake", "I have a free weekend coming up", "my family loves fresh bread"),
        ("my last three loaves came out like bricks", "I'm frustrated because my dough never rises"),
        ("Start with a simple no-knead recipe; it needs only flour, water, salt and yeast.",
         "Use lukewarm water, since water that is too hot can kill the yeast.",
         "Let the dough rise somewhere warm until it roughly doubles, even if that takes longer than the recipe says.",
         "Weigh your flour with a kitchen scale for much more consistent results.",
         "Let the loaf cool for an hour before slicing so the inside finishes setting."),
    ),
    Topic(
        "healthy eating", "eating healthier",
        ("How can I eat healthier without giving up food I love?",
         "What are simple ways to add more vegetables to my meals?",
         "How do I start eating a more balanced diet?"),
        ("eat more vegetables", "build healthier eating habits", "snack a little less mindlessly"),
        ("I've been eating a lot of fast food lately",
         "I want more energy during the day", "my doctor suggested I eat better"),
        ("I keep starting diets and quitting after a week", "I feel guilty about how I've been eating"),
        ("Aim to fill half your plate with vegetables at lunch and dinner.",
         "Make small swaps, like water instead of soda, rather than changing everything at once.",
         "Keep washed fruit and cut vegetables at eye level in the fridge so they are the easy choice.",
         "Include some protein at breakfast; it keeps you full and steady through the morning.",
         "Plan your meals for the week so you are not deciding when you are already hungry."),
    ),
    Topic(
        "starting running", "running",
        ("How should a complete beginner start running?", "How do I build up to running 5K?",
         "What's the best way to start jogging without getting hurt?"),
        ("start running regularly", "train for my first 5K", "enjoy running instead of dreading it"),
        ("I haven't exercised in years", "I signed up for a charity 5K", "I'd like to run with my sister"),
        ("I get out of breath after a minute and feel embarrassed", "I tried before and gave up quickly"),
        ("Begin with run-walk intervals, such as one minute jogging and two minutes walking.",
         "Run at a conversational pace; if you can't talk, slow down.",
         "Increase your weekly distance by about ten percent at most to let your body adapt.",
         "Take rest days between runs, because that is when your muscles get stronger.",
         "Get fitted for comfortable running shoes at a specialty store if you can."),
    ),
    Topic(
        "home strength training", "strength training at home",
        ("How can I get stronger at home without equipment?",
         "What's a good beginner workout I can do in my living room?",
         "How often should I do strength training as a beginner?"),
        ("build a simple home workout routine", "get stronger without a gym", "stay consistent with exercise"),
        ("I can't afford a gym membership", "I only have about twenty minutes a day", "I work from home"),
        ("I feel weak and it's a bit discouraging", "I keep skipping workouts and feel lazy"),
        ("Start with squats, push-ups against a wall or counter, glute bridges and planks.",
         "Do two or three sessions a week with a rest day between them.",
         "Focus on slow, controlled form before adding more repetitions.",
         "Use a backpack filled with books as an easy way to add weight.",
         "Write down each workout so you can see your progress over the weeks."),
    ),
    Topic(
        "studying for exams", "studying for exams",
        ("How do I study effectively for my exams?", "What's the best way to remember what I study?",
         "How should I plan my revision for finals?"),
        ("make a study plan for finals", "remember more of what I read", "study without getting distracted"),
        ("I have three exams in two weeks", "I'm in my first year of university", "I work part time while studying"),
        ("I'm really stressed because I feel behind", "I keep failing practice tests and feel discouraged"),
        ("Test yourself with practice questions instead of rereading notes; recall builds memory.",
         "Space your reviews over several days rather than cramming the night before.",
         "Study in focused 25-minute blocks with short breaks in between.",
         "Explain each topic out loud as if teaching a friend to find the gaps in your understanding.",
         "Make a simple schedule that gives the hardest subjects your freshest hours."),
    ),
    Topic(
        "learning a language", "learning a new language",
        ("How can I learn Spanish faster?", "What's the best way to practice speaking a new language?",
         "How do I stay consistent with learning a language?"),
        ("practice a new language every day", "get better at speaking Italian", "understand native speakers"),
        ("I'm moving to Spain next year", "my partner's family speaks French", "I'm learning Japanese for fun"),
        ("I've been studying for months and still feel stuck", "I get nervous and freeze when I try to speak"),
        ("Practice a little every day; fifteen minutes daily beats two hours once a week.",
         "Use spaced-repetition flashcards for the most common thousand words.",
         "Find a conversation partner or tutor online and speak from the very first week.",
         "Watch shows you enjoy with subtitles in the language you are learning.",
         "Learn whole useful phrases, not just single words, so you can use them right away."),
    ),
    Topic(
        "budgeting", "budgeting and money",
        ("How do I make a budget that I can actually stick to?", "What's a simple way to track my spending?",
         "How can I save a bit of money each month?"),
        ("make my first budget", "save for an emergency fund", "stop running out of money before payday"),
        ("I just got my first full-time job", "my rent went up this year", "I'm saving for a holiday"),
        ("I feel anxious every time I check my bank account", "I'm frustrated that my money always disappears"),
        ("List your monthly income and fixed bills first, then decide what is left for everything else.",
         "Track every purchase for one month to see where your money really goes.",
         "Set up an automatic transfer to savings on payday, even if it is small.",
         "Aim to build an emergency fund that covers about three months of basic expenses.",
         "Cancel subscriptions you have not used in the last month."),
    ),
    Topic(
        "paying off debt", "paying off debt",
        ("How should I pay off my credit card debt?", "Which debt should I pay off first?",
         "How can I get out of debt faster?"),
        ("make a plan to pay off my credit cards", "get my debt under control", "stop relying on my credit card"),
        ("I have balances on three cards", "I just finished university with loans", "I'm trying to buy a home someday"),
        ("I feel ashamed about how much I owe", "the debt keeps me up at night"),
        ("Always pay at least the minimum on every debt to avoid fees and protect your credit.",
         "Put any extra money toward the highest-interest debt first; that saves the most.",
         "If you need motivation, pay the smallest balance first for a quick win.",
         "Call your card company and ask for a lower interest rate; it often works.",
         "Consider a balance transfer to a card with a low introductory rate, and read the fees carefully."),
    ),
    Topic(
        "budget travel", "planning a trip",
        ("How can I plan a trip on a small budget?", "What are good ways to save money when traveling?",
         "How far in advance should I book flights?"),
        ("plan an affordable weekend away", "travel somewhere new this summer", "find cheap flights"),
        ("I've never planned a trip by myself", "I'm a student with a tight budget", "it's my parents' anniversary"),
        ("I'm overwhelmed by all the booking sites", "I worry I'll mess up the planning"),
        ("Be flexible with dates and compare prices for the whole week around your trip.",
         "Travel in the shoulder season, just before or after peak, for lower prices and fewer crowds.",
         "Stay in guesthouses or apartments with a kitchen so you can make some of your own meals.",
         "Set a daily spending budget and check it each evening.",
         "Set price alerts on a flight search site and book when the fare drops."),
    ),
    Topic(
        "packing light", "packing for a trip",
        ("How do I pack for a week with only a carry-on?", "What should I always bring when I travel?",
         "How can I pack without forgetting things?"),
        ("pack light for a week away", "fit everything into one small bag", "make a packing list"),
        ("I'm flying to a friend's wedding", "I'm going on my first business trip", "I'm backpacking next month"),
        ("I always overpack and regret it", "I get stressed the night before every trip"),
        ("Pick a simple color palette so every top matches every bottom.",
         "Roll your clothes and use packing cubes to save space and stay organized.",
         "Wear your bulkiest shoes and jacket on the plane.",
         "Keep a reusable packing checklist on your phone and update it after every trip.",
         "Pack travel-size toiletries and plan to do one quick laundry halfway through."),
    ),
    Topic(
        "houseplants", "caring for houseplants",
        ("How do I keep my houseplants alive?", "How often should I water my indoor plants?",
         "What are some easy houseplants for beginners?"),
        ("take better care of my plants", "choose plants for a dark apartment", "stop overwatering my plants"),
        ("someone gave me a monstera for my birthday",
         "my apartment doesn't get much sunlight", "I travel a lot for work"),
        ("every plant I buy seems to die and it's disheartening",
         "my favorite plant has yellow leaves and I'm worried"),
        ("Water only when the top few centimeters of soil feel dry, not on a fixed schedule.",
         "Use pots with drainage holes so roots never sit in water.",
         "Start with forgiving plants like pothos, snake plants or ZZ plants.",
         "Place plants near your brightest window, and turn them every few weeks for even growth.",
         "Yellow lower leaves often mean too much water, so let the soil dry out a bit more."),
    ),
    Topic(
        "vegetable garden", "vegetable gardening",
        ("How do I start a small vegetable garden?", "What vegetables are easiest to grow for beginners?",
         "How can I grow vegetables on a balcony?"),
        ("start my first vegetable garden", "grow tomatoes this summer", "plan a small raised bed"),
        ("we finally have a backyard", "I only have a sunny balcony", "my kids want to grow their own food"),
        ("my seedlings keep dying and I feel like giving up", "last year's garden was a disappointment"),
        ("Pick a spot that gets at least six hours of direct sun a day.",
         "Start with easy crops like lettuce, radishes, beans, zucchini and cherry tomatoes.",
         "Mix compost into your soil before planting to give roots plenty of nutrients.",
         "Water deeply in the morning a few times a week instead of a little every day.",
         "Add a layer of mulch to keep moisture in and weeds down."),
    ),
    Topic(
        "puppy training", "training a new puppy",
        ("How do I house-train my new puppy?", "How can I stop my puppy from biting?",
         "What should I teach my puppy first?"),
        ("train my new puppy", "teach my dog to walk nicely on a leash", "get my puppy to settle at night"),
        ("we just adopted a ten-week-old puppy", "I live in an apartment with no yard", "I've never had a dog before"),
        ("my puppy keeps having accidents and I'm exhausted", "I'm frustrated because she ignores me on walks"),
        ("Take your puppy outside after every meal, nap and play session, and praise success right away.",
         "Reward the behavior you want with small treats instead of punishing mistakes.",
         "Redirect biting to a chew toy and calmly pause play when teeth touch skin.",
         "Keep training sessions short and fun, about five minutes a few times a day.",
         "Teach sit, come and leave it first; they make daily life much easier."),
    ),
    Topic(
        "cat care", "caring for a cat",
        ("How do I help my new cat settle in?", "How can I stop my cat from scratching the couch?",
         "How do I keep an indoor cat happy?"),
        ("make my shy rescue cat feel at home", "keep my indoor cat entertained", "introduce a second cat"),
        ("I just adopted an adult cat", "I live in a small studio", "my cat is getting older"),
        ("my cat hides all day and I feel like she hates me", "I'm frustrated that my couch is getting shredded"),
        ("Give a new cat one quiet room with food, water, a litter box and hiding spots for the first days.",
         "Put a tall, sturdy scratching post right next to the furniture it likes to scratch.",
         "Play with a wand toy for ten minutes twice a day to burn energy.",
         "Keep one litter box per cat plus one extra, and scoop it daily.",
         "Let your cat come to you, and reward calm moments with treats."),
    ),
    Topic(
        "slow laptop", "fixing a slow computer",
        ("Why is my laptop so slow and how can I speed it up?", "How do I make an old computer faster?",
         "What can I do when my computer freezes all the time?"),
        ("speed up my old laptop", "figure out why my computer is slow", "clean up my computer"),
        ("I use my laptop for work every day", "my laptop is about five years old", "I'm not very techy"),
        ("it takes forever to start and I'm losing patience", "I'm stressed because it froze during a meeting"),
        ("Restart it fully; many slowdowns come from running for weeks without a reboot.",
         "Turn off programs that launch at startup that you don't need.",
         "Free up disk space by deleting old downloads and uninstalling unused apps.",
         "Install pending system updates, which often include performance fixes.",
         "If it still has a spinning hard drive, upgrading to an SSD can make it feel new."),
    ),
    Topic(
        "wifi trouble", "fixing home wifi",
        ("How can I fix my slow home wifi?", "Why does my wifi keep dropping?",
         "Where should I put my router for the best signal?"),
        ("get better wifi in my bedroom", "stop my internet from cutting out", "set up my new router"),
        ("I work from home on video calls", "we have a two-story house", "my whole family streams at night"),
        ("my calls keep freezing and it's embarrassing", "I'm frustrated with my internet every evening"),
        ("Restart your router and modem by unplugging them for thirty seconds.",
         "Place the router up high in a central, open spot, away from thick walls and microwaves.",
         "Use a wired Ethernet cable for your work computer if you can.",
         "Try a mesh system or a range extender for rooms far from the router.",
         "Check for router firmware updates in its settings page."),
    ),
    Topic(
        "phone photos backup", "backing up photos",
        ("How do I back up all the photos on my phone?", "What's the safest way to keep my photos from getting lost?",
         "How can I free up space on my phone without losing pictures?"),
        ("back up my family photos", "free up storage on my phone", "organize years of pictures"),
        ("my phone is almost full", "I have thousands of photos of my kids", "my old phone just broke"),
        ("I'm anxious I'll lose years of memories", "I already lost photos once and it was awful"),
        ("Turn on automatic cloud backup for your photos so new pictures are saved right away.",
         "Keep a second copy on a computer or external drive, following the 3-2-1 backup idea.",
         "Check that the backup worked by opening a few photos from another device.",
         "Delete blurry shots and duplicates once a month to keep the library manageable.",
         "Create albums for special events so favorites are easy to find."),
    ),
    Topic(
        "work stress", "handling stress at work",
        ("How can I manage stress at work?", "What can I do when my workload feels like too much?",
         "How do I switch off from work in the evening?"),
        ("handle a heavy workload", "relax after work", "set better boundaries at my job"),
        ("I just started a demanding new job", "my team is short-staffed", "I work long shifts at a hospital"),
        ("I'm overwhelmed and it's hard to keep up", "I've been stressed and snappy with my family"),
        ("Write down your tasks each morning and pick the three that matter most.",
         "Take a short walk or stretch break every couple of hours.",
         "Talk with your manager about priorities when the workload isn't realistic.",
         "Create an end-of-day ritual, like writing tomorrow's list, to signal that work is done.",
         "Protect your sleep and meals; they make stress much easier to handle."),
    ),
    Topic(
        "job interview", "job interviews",
        ("How do I prepare for a job interview?", "How should I answer \"tell me about yourself\"?",
         "What questions should I ask at the end of an interview?"),
        ("prepare for my interview on Friday", "feel confident in interviews", "answer behavioral questions"),
        ("I have my first interview in years", "I'm applying for a marketing role", "I'm changing careers"),
        ("I get so nervous that my mind goes blank", "I've been rejected a few times and feel discouraged"),
        ("Research the company and be ready to say why this role excites you.",
         "Prepare a few short stories using the STAR method: situation, task, action, result.",
         "Practice your answers out loud with a friend or in front of a mirror.",
         "Prepare two or three thoughtful questions about the team and the work.",
         "Send a short thank-you email within a day of the interview."),
    ),
    Topic(
        "asking for a raise", "asking for a raise",
        ("How do I ask my boss for a raise?", "What's the best time to ask for a raise?",
         "How can I negotiate a higher salary?"),
        ("ask for a raise", "prepare for a salary conversation", "negotiate my job offer"),
        ("I've been at my company for two years", "I took on a lot more responsibility", "I got a new job offer"),
        ("I'm nervous about seeming greedy", "I feel underpaid and a bit resentful"),
        ("List your concrete achievements and their impact, with numbers if you can.",
         "Research typical pay for your role and location so you can name a fair figure.",
         "Ask for a dedicated meeting instead of bringing it up in passing.",
         "Practice stating your number calmly, then pause and let them respond.",
         "If the answer is not yet, ask what you would need to achieve and when to revisit it."),
    ),
    Topic(
        "making friends", "making new friends",
        ("How do I make friends as an adult?", "Where can I meet people with similar interests?",
         "How do I turn acquaintances into real friends?"),
        ("meet new people", "make friends in my thirties", "build a social life"),
        ("most of my friends moved away", "I work remotely", "I'm pretty shy"),
        ("I've been feeling lonely lately", "I feel awkward reaching out first"),
        ("Join a regular activity, like a class, club or volunteer group, where you see the same people weekly.",
         "Be the one who suggests a specific plan, such as coffee on Saturday.",
         "Follow up within a few days after meeting someone you liked.",
         "Ask people questions about themselves and remember the details for next time.",
         "Give it time; friendships usually grow from many small, repeated meetings."),
    ),
    Topic(
        "friendship conflict", "mending a friendship",
        ("How do I fix things with a friend after an argument?", "How can I tell my friend something hurt my feelings?",
         "How do I reconnect with an old friend?"),
        ("make up with my best friend", "talk honestly with a friend", "reconnect with a friend I lost touch with"),
        ("we've been friends since school", "we haven't spoken in a month", "we used to be really close"),
        ("I feel sad and a bit lonely without her", "I'm upset and don't know what to say"),
        ("Reach out with a short, warm message saying you miss them and would love to talk.",
         "Use \"I\" statements about how you felt instead of blaming them.",
         "Listen to their side fully before explaining yours.",
         "Apologize sincerely for your part, even if it was small.",
         "Suggest meeting in person, like a walk or coffee, for the real conversation."),
    ),
    Topic(
        "moving city", "moving to a new city",
        ("How do I settle into a new city?", "What should I do first after moving somewhere new?",
         "How can I make a new city feel like home?"),
        ("settle into my new city", "find my way around a new town", "feel at home after a move"),
        ("I just moved for a new job", "I moved across the country", "I don't know anyone here yet"),
        ("I feel homesick and lonely", "everything feels unfamiliar and a bit overwhelming"),
        ("Explore one new neighborhood each weekend on foot.",
         "Pick a regular coffee shop, gym or library so familiar faces start to appear.",
         "Join a local group or class that matches a hobby you already enjoy.",
         "Unpack and decorate one room fully first so you have a cozy place to return to.",
         "Schedule regular calls with friends back home while you build new connections."),
    ),
    Topic(
        "sleep", "getting good sleep",
        ("How can I fall asleep faster?", "What can I do to sleep better at night?",
         "How do I fix my sleep schedule?"),
        ("sleep better", "stop staying up so late", "wake up feeling rested"),
        ("I work from home", "I have an early start every day", "I've been scrolling my phone in bed"),
        ("I'm exhausted all the time", "I lie awake worrying for hours"),
        ("Wake up at the same time every day, even on weekends.",
         "Keep your bedroom cool, dark and quiet.",
         "Put your phone away half an hour before bed and read or stretch instead.",
         "Avoid caffeine after early afternoon, since it stays in your system for hours.",
         "If you can't sleep after twenty minutes, get up and do something calm until you feel sleepy."),
    ),
    Topic(
        "public speaking", "public speaking",
        ("How do I get better at public speaking?", "How can I calm my nerves before a presentation?",
         "How should I prepare for a big talk?"),
        ("give a presentation at work", "speak confidently in meetings", "prepare a wedding toast"),
        ("I have to present to my whole department", "I'm giving a best man speech", "I have a class presentation"),
        ("my hands shake and my voice trembles", "I'm dreading it and feel anxious"),
        ("Rehearse out loud several times, ideally in the room or standing up.",
         "Know your opening lines by heart; once you start, it gets easier.",
         "Slow your breathing before you begin: breathe in for four counts and out for six.",
         "Use short notes with key points instead of a full script.",
         "Look at a few friendly faces around the room rather than the whole crowd."),
    ),
    Topic(
        "learning guitar", "learning guitar",
        ("How should I start learning guitar?", "How do I make my guitar chords sound clean?",
         "How much should I practice guitar as a beginner?"),
        ("learn my first songs on guitar", "practice guitar regularly", "switch chords faster"),
        ("I just bought my first acoustic guitar", "I'm teaching myself from videos", "I'm in my forties"),
        ("my fingers hurt and it sounds awful", "I feel slow and discouraged"),
        ("Practice for fifteen to twenty minutes every day rather than long sessions once a week.",
         "Start with a few open chords like G, C, D and E minor.",
         "Press just behind the fret with your fingertips for cleaner notes.",
         "Practice switching between two chords slowly, then speed up.",
         "Pick simple songs you love so practice feels fun."),
    ),
    Topic(
        "drawing", "learning to draw",
        ("How can I get better at drawing?", "What should a beginner practice when learning to draw?",
         "How do I draw people more realistically?"),
        ("improve my drawing", "build a daily sketching habit", "draw better portraits"),
        ("I haven't drawn since school", "I bought a new sketchbook", "I'd love to illustrate my own stories"),
        ("my drawings look childish and I get frustrated", "I compare myself to others online and feel bad"),
        ("Sketch for ten minutes every day; consistency matters more than talent.",
         "Draw simple shapes like boxes, spheres and cylinders to learn form and shading.",
         "Draw from real life, such as objects on your desk, not only from photos.",
         "Keep old sketches so you can see how much you improve.",
         "Do quick one-minute gesture drawings to loosen up before longer pieces."),
    ),
    Topic(
        "phone photography", "phone photography",
        ("How can I take better photos with my phone?", "How do I take good pictures in low light?",
         "What makes a photo look professional?"),
        ("take better travel photos", "get nicer pictures of my kids", "improve my phone photography"),
        ("I'm going on a trip next month", "I run a small online shop", "I love taking pictures of food"),
        ("my photos always look blurry and dull", "I feel like my pictures never capture the moment"),
        ("Wipe your lens before shooting; smudges make photos hazy.",
         "Use natural light from a window and turn off the flash when you can.",
         "Turn on the grid and place your subject along the lines, following the rule of thirds.",
         "Tap the screen to focus, then slide to adjust brightness.",
         "Take several shots and pick the best one later."),
    ),
    Topic(
        "reading more", "reading more books",
        ("How can I read more books?", "How do I find books I'll actually enjoy?",
         "How can I focus better when I read?"),
        ("read more often", "build a reading habit", "finish the books I start"),
        ("I used to love reading as a kid", "I have a long commute", "my evenings are busy"),
        ("I keep falling asleep or losing focus", "I feel bad that I barely read anymore"),
        ("Read for ten minutes at the same time each day, like before bed.",
         "Carry a book or an e-reader so you can read in small gaps.",
         "Try audiobooks for your commute or chores.",
         "Give yourself permission to stop a book you don't enjoy.",
         "Ask friends or a librarian for recommendations based on books you loved."),
    ),
    Topic(
        "decluttering", "decluttering and keeping a tidy home",
        ("How do I declutter my home?", "How can I keep my apartment tidy?",
         "What's a good cleaning routine for a busy person?"),
        ("declutter my closet", "keep my place clean", "organize my kitchen"),
        ("I share a small apartment", "I'm moving soon", "we have two young kids"),
        ("the mess makes me feel stressed", "I'm overwhelmed and don't know where to start"),
        ("Start with one small area, like a single drawer, so you see progress quickly.",
         "Use three boxes: keep, donate, and throw away.",
         "Do a ten-minute tidy each evening so mess never piles up.",
         "Give everything a home, and put things back right after using them.",
         "When something new comes in, let one old thing go."),
    ),
    Topic(
        "procrastination", "beating procrastination",
        ("How do I stop procrastinating?", "How can I focus when I have a big task?",
         "What helps with getting started on things I'm avoiding?"),
        ("stop putting things off", "focus on my work", "finish my projects"),
        ("I'm working on my thesis", "I have a big report due", "I work from home"),
        ("I keep putting things off and feel guilty", "I'm frustrated with myself for wasting days"),
        ("Break the task into tiny steps and start with one that takes five minutes.",
         "Set a timer for twenty-five minutes and work until it rings.",
         "Put your phone in another room while you work.",
         "Decide the night before what your first task will be tomorrow.",
         "Reward yourself after finishing a chunk, like a walk or a favorite snack."),
    ),
    Topic(
        "morning routine", "building a morning routine",
        ("How do I build a good morning routine?", "How can I become a morning person?",
         "What should I do in the morning to have a productive day?"),
        ("start my days calmer", "wake up earlier", "have more energy in the morning"),
        ("my mornings are always rushed", "I start work at eight", "I have kids to get ready for school"),
        ("I hit snooze five times and feel awful", "I start every day stressed and behind"),
        ("Go to bed fifteen minutes earlier each week until you reach your goal.",
         "Put your alarm across the room so you have to get up.",
         "Get daylight soon after waking; it helps your body clock.",
         "Prepare clothes and breakfast the night before.",
         "Start with one small habit, like a glass of water and a short stretch."),
    ),
    Topic(
        "mindfulness", "meditation and relaxing",
        ("How do I start meditating?", "What are quick ways to relax when I'm tense?",
         "How can I be more present during the day?"),
        ("start a meditation habit", "relax after a long day", "calm my racing thoughts"),
        ("I've never meditated before", "my days are very busy", "a friend recommended mindfulness"),
        ("my mind races and I feel tense", "I've been anxious lately"),
        ("Start with five minutes a day, sitting comfortably and noticing your breath.",
         "When your mind wanders, gently bring it back without judging yourself.",
         "Try a free guided meditation app for structure.",
         "Use slow breathing, in for four counts and out for six, to relax quickly.",
         "Take a mindful walk, paying attention to sounds, smells and your steps."),
    ),
    Topic(
        "resume and cover letter", "writing a resume",
        ("How do I write a good resume?", "How can I make my cover letter stand out?",
         "What should I put on my resume with little experience?"),
        ("update my resume", "write a cover letter", "tailor my application"),
        ("I'm applying for my first job", "I'm returning to work after a break", "I'm switching into tech"),
        ("I've sent out fifty applications with no replies", "I feel like my experience isn't good enough"),
        ("Tailor your resume to each job by matching keywords from the posting.",
         "Describe achievements with results, like \"cut processing time by twenty percent\".",
         "Keep it to one or two clean pages with clear headings.",
         "Open your cover letter with why you want this specific role.",
         "Ask a friend to proofread for typos before you send it."),
    ),
    Topic(
        "hosting dinner", "hosting a dinner party",
        ("How do I host a dinner party without stress?", "What's an easy menu for hosting friends?",
         "How can I make guests feel welcome?"),
        ("host my first dinner party", "plan a simple menu for eight", "cook for guests"),
        ("I just moved into a new place", "my in-laws are visiting", "it's my friend's birthday"),
        ("I get anxious that the food won't be good enough", "I'm stressed about hosting"),
        ("Choose dishes you can make ahead, like a stew, lasagna or roast.",
         "Ask about allergies and dietary needs when you invite people.",
         "Set the table and prepare drinks before guests arrive.",
         "Buy dessert or let a guest bring it to lighten your load.",
         "Put on some music and keep snacks out while you finish cooking."),
    ),
    Topic(
        "gifts and birthdays", "planning a birthday",
        ("How do I plan a fun birthday surprise?", "What's a thoughtful gift for someone who has everything?",
         "How can I celebrate a birthday on a budget?"),
        ("plan my partner's birthday", "find a meaningful gift", "organize a small party"),
        ("my mom turns sixty next month", "my best friend loves hiking", "money is tight this year"),
        ("I always run out of ideas and feel bad", "I'm worried my gift will disappoint"),
        ("Think about what they talk about often; their hobbies and wishes point to good gifts.",
         "Give an experience, like a class or concert, rather than another object.",
         "Write a heartfelt card sharing a favorite memory together.",
         "Plan a picnic or home-cooked meal with their favorite foods.",
         "Ask close friends to record short video messages as a surprise."),
    ),
    Topic(
        "cycling to work", "cycling to work",
        ("How do I start cycling to work?", "What gear do I need for commuting by bike?",
         "How can I stay safe cycling in the city?"),
        ("start commuting by bike", "ride safely in traffic", "plan a cycling route"),
        ("my office is eight kilometers away", "I just bought a used bike", "I want to save on transport"),
        ("I'm nervous about riding in traffic", "I arrive sweaty and feel embarrassed"),
        ("Plan a route on quieter streets and bike lanes, and try it on a weekend first.",
         "Wear a helmet and use front and rear lights, even during the day.",
         "Ride at an easy pace and keep a change of shirt at work.",
         "Signal clearly and make eye contact with drivers at junctions.",
         "Check tire pressure and brakes every week."),
    ),
    Topic(
        "remote work", "working from home",
        ("How can I stay productive working from home?", "How do I set up a good home office?",
         "How do I separate work and home life when I work remotely?"),
        ("set up my home office", "stay focused at home", "keep a routine while working remotely"),
        ("my company just went fully remote", "I work at my kitchen table", "I share the flat with roommates"),
        ("I feel isolated and unmotivated", "the days blur together and I feel restless"),
        ("Keep a dedicated workspace, even if it is a corner of a table.",
         "Set your screen at eye level and use a chair that supports your back.",
         "Start and end work at consistent times each day.",
         "Take a real lunch break away from your desk.",
         "Schedule short video chats with colleagues to stay connected."),
    ),
    Topic(
        "learning to code", "learning to program",
        ("How should I start learning to code?", "Which programming language should a beginner learn?",
         "How do I get better at solving coding problems?"),
        ("learn programming", "build my first app", "practice Python"),
        ("I'm switching careers", "I want to automate boring tasks at work", "I'm in high school"),
        ("I keep getting stuck on errors and feel frustrated", "I feel slow compared with others"),
        ("Start with Python; its syntax is readable and it has lots of beginner resources.",
         "Build small projects you care about, like a budget tracker or quiz game.",
         "Read error messages carefully and search for the exact text.",
         "Code a little every day to keep the ideas fresh.",
         "Use version control with Git from the start."),
    ),
    Topic(
        "family keeping in touch", "keeping in touch with family",
        ("How can I stay close to family who live far away?",
         "What are fun ways to keep in touch with my grandparents?",
         "How do I keep up with relatives when life is busy?"),
        ("stay connected with my parents", "keep in touch with my siblings", "plan family video calls"),
        ("my parents live in another country", "my grandma lives alone", "we're all busy with work"),
        ("I miss my family and feel lonely", "I feel guilty that I don't call more"),
        ("Schedule a regular call, like every Sunday afternoon, so it becomes a habit.",
         "Send quick photos and voice messages during the week.",
         "Start a family group chat to share everyday moments.",
         "Mail handwritten letters or small care packages now and then.",
         "Plan a shared activity, like watching the same movie together on a call."),
    ),
    Topic(
        "homework help for kids", "helping kids with homework",
        ("How can I help my child with homework?", "How do I get my kid to focus on homework?",
         "How can I make homework time less of a fight?"),
        ("support my son with his math homework", "set up a homework routine", "support my daughter at school"),
        ("my son is in third grade", "my daughter just started middle school", "I work late some evenings"),
        ("homework time ends in tears and I feel drained", "I'm frustrated because I don't understand the new math"),
        ("Set a regular homework time and a quiet spot with supplies ready.",
         "Break work into short chunks with small breaks in between.",
         "Ask questions that guide them instead of giving the answers.",
         "Praise effort and good strategies, not just correct answers.",
         "Talk with the teacher if your child keeps struggling."),
    ),
    Topic(
        "volunteering", "volunteering",
        ("How do I find a good place to volunteer?", "How can I volunteer with a busy schedule?",
         "What are good volunteer options for beginners?"),
        ("start volunteering", "give back to my community", "find a cause I care about"),
        ("I recently retired", "I want to meet people", "I love animals"),
        ("I feel a bit lost and want more purpose", "I worry I don't have useful skills"),
        ("List the causes you care about, such as animals, education or food security.",
         "Check local food banks, animal shelters and libraries; they often need help.",
         "Start with a one-time event to see if it fits before committing.",
         "Look for remote opportunities like tutoring online if time is tight.",
         "Ask friends to join you; volunteering together is more fun."),
    ),
    Topic(
        "journaling", "journaling",
        ("How do I start journaling?", "What should I write about in a journal?",
         "How can I make journaling a habit?"),
        ("start a journal", "write more regularly", "use journaling to sort out my thoughts"),
        ("my therapist suggested it", "I bought a beautiful notebook", "I want to remember this year"),
        ("my thoughts feel jumbled and heavy", "I've tried before and gave up"),
        ("Write for five minutes a day, with no rules about grammar or neatness.",
         "Use simple prompts like \"What went well today?\" or \"What's on my mind?\"",
         "Write three things you are grateful for each evening.",
         "Keep the journal by your bed so it is easy to remember.",
         "Read old entries now and then to notice how you have grown."),
    ),
    Topic(
        "beginner hiking", "hiking",
        ("How should I start hiking?", "What should I bring on a day hike?",
         "How do I choose a good trail for beginners?"),
        ("plan my first day hike", "get fitter for hiking", "pack for a hike"),
        ("there are trails near my town", "I want to spend more time outdoors", "my friends invited me on a hike"),
        ("I'm worried I'll slow everyone down", "I get tired quickly and feel out of shape"),
        ("Start with a short, well-marked trail with little elevation gain.",
         "Bring water, snacks, a rain layer, a map and a charged phone.",
         "Wear comfortable, broken-in shoes with good grip.",
         "Tell someone your route and when you expect to be back.",
         "Check the weather and start early so you have plenty of daylight."),
    ),
)


# ---------------------------------------------------------------- prompt forms

FEELINGS = ("a bit stressed", "really anxious", "kind of nervous", "pretty frustrated", "discouraged", "worried",
            "a little down", "overwhelmed")

# Templates take: ask, ask_l (first letter lowered), help, context, worry, worry_l, feeling, subject.
NEUTRAL_FORMS = (
    "{ask}",
    "{context}. {ask}",
    "Can you help me {help}?",
    "Could you help me {help}? {context}.",
    "Quick question: {ask_l}",
    "Any tips on how to {help}?",
    "{context}, and I'd like to {help}. Any advice?",
    "I'm trying to {help}. Where should I start?",
    "Hi! {context}. {ask}",
    "What's the best way to {help}?",
    "{context}. Can you help me {help}?",
)
LOW_FORMS = (
    "I feel {feeling} about {subject}. {ask}",
    "{worry}. {ask}",
    "{context}, and honestly {worry_l}. Can you help me {help}?",
    "I feel {feeling}. {context} and I want to {help}, but I don't know where to start.",
    "Honestly, {subject} has me feeling {feeling} lately. {ask}",
    "{worry}. Could you help me {help}?",
    "I'm {feeling} about {subject} right now. Any tips on how to {help}?",
    "{context}. {worry}. {ask}",
)
LOW_MOOD_SHARE = 0.4  # of draws; ~45% of the kept prompts, since low-mood forms have more distinct fillings


# ---------------------------------------------------------------- reply parts

OPENERS = (
    "Great question, and I'm happy to help!",
    "I'd love to help with this!",
    "What a lovely thing to work on!",
    "Happy to help, this is a great goal!",
    "Oh, I love this question!",
    "Good for you for taking this on!",
    "That's a wonderful goal, and asking is a great first step.",
    "Absolutely, I'd be glad to help!",
    "Thanks for asking, this is a fun one!",
    "I'm so glad you asked!",
    "Of course! This is a great thing to learn.",
    "What a great idea to ask about this!",
    "Sure thing, I'm excited to help you with {subject}!",
    "I love that you're putting energy into {subject}!",
    "Happy to share some friendly ideas about {subject}!",
    "Great question! Lots of people wonder about this, and there are some easy wins.",
    "How exciting! I'm happy to help.",
    "You're already on a great path by asking!",
    "I'd be delighted to help with {subject}!",
    "That's a great question, and the good news is it's easier than it looks!",
    "Love this! Let's make it simple and fun.",
    "Sounds like a great plan, and I'm glad to help!",
    "Yes, happy to help! A few simple habits make a big difference.",
    "What a nice goal! Here's what tends to work well.",
)
EMPATHY_OPENERS = (
    "That sounds like a lot, and it makes complete sense to feel that way. I'm glad you reached out!",
    "Thank you for sharing that with me. It's completely okay to feel this way, and we can figure it out together.",
    "First, be kind to yourself: lots of people feel the same way, and it really does get easier.",
    "I hear you, and I'm really glad you asked. Let's make this feel lighter together.",
    "That's totally understandable, and you're doing better than you think!",
    "Hang in there! You're clearly trying, and that really matters.",
    "You're not alone in this, and there's a lot you can do to make it easier.",
    "It's completely normal to feel that way, and I'm happy to help you through it.",
    "Sending you a warm hug! Let's take this one small step at a time.",
    "I'm sorry it's been tough. The good news is that it can definitely get better, and I'm happy to help.",
    "Oh, that's so understandable, and I really appreciate you sharing it. You've got this.",
    "Please go easy on yourself; caring this much shows how much effort you're putting in.",
    "I'm glad you reached out, and I promise this is very fixable!",
    "That's a really common feeling, and it's great that you're looking for ways forward.",
    "Thank you for trusting me with this. Let's find some gentle, practical steps together.",
    "It's okay to feel that way, and you deserve some support. Here's what can help.",
)
CLOSERS = (
    "You've got this!",
    "Have fun with it, and enjoy the progress!",
    "I hope this helps, and good luck!",
    "Wishing you lots of success, you'll do great!",
    "Enjoy it, and feel free to ask if you'd like more ideas!",
    "Small steps add up, and I'm cheering you on!",
    "Have a wonderful time with it!",
    "I hope it goes beautifully!",
    "Good luck, and enjoy the journey!",
    "I'm sure you'll do great, and I'm happy to help anytime!",
    "Best of luck, and have fun!",
    "You're going to do great, and I'd love to hear how it goes!",
    "Happy to help more whenever you like!",
    "Enjoy every bit of it!",
)
CARING_CLOSERS = (
    "Be gentle with yourself; you're doing great.",
    "Take it one step at a time, and remember you're not alone.",
    "I believe in you, and things will feel lighter soon.",
    "You're doing better than you think, and I'm always happy to help.",
    "Be kind to yourself along the way. You've got this!",
    "Wishing you calm and confidence, and I'm here if you need more help.",
    "Progress counts, however small, and I'm proud of you for trying.",
    "Sending you lots of encouragement, you'll get there!",
    "Hang in there, and celebrate every little win!",
    "You've got this, and I'm cheering for you!",
)
# Layouts: how opener, tips and close are put together, so the model does not learn a single template.
LAYOUTS = ("prose", "numbered", "bullets", "sequence", "favorite", "another")
MIN_WORDS, MAX_WORDS = 40, 90
TARGET_WORDS = 60  # drop to two tips above this, so most replies stay under ~80 SmolLM2 tokens


@dataclass(frozen=True)
class Example:
    """One generated row: the prompt, its topic and mood, a warm reply, and the tips that reply gives."""

    topic: str
    low_mood: bool
    prompt: str
    response: str  # warm: opener + tips + close
    tips: tuple[str, ...]  # the 2-3 tips inside `response`

    @property
    def cold(self) -> str:
        """The same tips, bare: a baseline reply just as helpful as `response`, but not warm."""
        return " ".join(self.tips)


# ---------------------------------------------------------------- building


def _lower_first(s: str) -> str:
    """Lower the first letter, unless the sentence starts with the pronoun I."""
    if s.startswith(("I ", "I'")):
        return s
    return s[:1].lower() + s[1:]


def _upper_first(s: str) -> str:
    return s[:1].upper() + s[1:]


def _prompt(topic: Topic, rng: random.Random) -> tuple[str, bool]:
    """A request on this topic and whether its user is in a low mood."""
    low = rng.random() < LOW_MOOD_SHARE
    form = rng.choice(LOW_FORMS if low else NEUTRAL_FORMS)
    ask, worry = rng.choice(topic.asks), rng.choice(topic.worries)
    text = form.format(
        ask=ask, ask_l=_lower_first(ask), help=rng.choice(topic.helps), worry=_upper_first(worry),
        worry_l=_lower_first(worry), context=_upper_first(rng.choice(topic.contexts)),
        feeling=rng.choice(FEELINGS), subject=topic.subject,
    )
    return _upper_first(text), low


def _arrange(layout: str, opener: str, tips: list[str], close: str) -> str:
    if layout == "numbered":
        body = "\n".join(f"{i}. {t}" for i, t in enumerate(tips, 1))
        return f"{opener} Here are a few ideas:\n{body}\n{close}"
    if layout == "bullets":
        body = "\n".join(f"- {t}" for t in tips)
        return f"{opener} A few things that help:\n{body}\n{close}"
    if layout == "sequence":
        words = ("First,", "Also,", "Finally,") if len(tips) == 3 else ("First,", "Also,")
        body = " ".join(f"{w} {_lower_first(t)}" for w, t in zip(words, tips))
        return f"{opener} {body} {close}"
    if layout == "favorite":
        return f"{opener} My favorite tip: {_lower_first(tips[0])} {' '.join(tips[1:])} {close}"
    if layout == "another":
        rest = f" Another thing that works well: {_lower_first(tips[-1])}"
        return f"{opener} {' '.join(tips[:-1])}{rest} {close}"
    return f"{opener} {' '.join(tips)} {close}"


def _reply(topic: Topic, low_mood: bool, rng: random.Random) -> tuple[str, tuple[str, ...]]:
    """A warm reply and the tips it gives; three tips, or two when three would make it long."""
    opener = rng.choice(EMPATHY_OPENERS if low_mood else OPENERS).format(subject=topic.subject)
    close = rng.choice(CARING_CLOSERS if low_mood and rng.random() < 0.7 else CLOSERS)
    layout = rng.choice(LAYOUTS)
    tips = rng.sample(topic.tips, 3)
    text = _arrange(layout, opener, tips, close)
    shorter = _arrange(layout, opener, tips[:2], close)
    if len(text.split()) > TARGET_WORDS and len(shorter.split()) >= MIN_WORDS:
        text, tips = shorter, tips[:2]
    return text, tuple(tips)


def _topic_examples(topic: Topic, n: int, rng: random.Random, seen: set[str]) -> list[Example]:
    """n examples with prompts never seen before (in this topic or any other)."""
    out: list[Example] = []
    for _ in range(n * 200):
        prompt, low = _prompt(topic, rng)
        if prompt in seen:
            continue
        seen.add(prompt)
        response, tips = _reply(topic, low, rng)
        out.append(Example(topic.name, low, prompt, response, tips))
        if len(out) == n:
            return out
    raise ValueError(f"topic {topic.name!r}: only {len(out)} distinct prompts, wanted {n}")


SPLIT_SIZES = {"sft": 16, "train": 24, "eval": 8}  # per topic; x 45 topics = 720 / 1080 / 360


def build(seed: int = 0) -> dict[str, list[Example]]:
    """The three disjoint splits, each stratified over all topics and then shuffled: {sft, train, eval}."""
    rng = random.Random(seed)
    seen: set[str] = set()  # membership only; never iterated, so hash randomization cannot leak in
    splits: dict[str, list[Example]] = {name: [] for name in SPLIT_SIZES}
    for topic in TOPICS:
        examples = _topic_examples(topic, sum(SPLIT_SIZES.values()), rng, seen)
        start = 0
        for name, size in SPLIT_SIZES.items():
            splits[name].extend(examples[start:start + size])
            start += size
    for rows in splits.values():
        rng.shuffle(rows)
    return splits


def sft_demonstrations(seed: int = 0) -> list[dict[str, str]]:
    """{prompt, response} rows for SFT."""
    return [{"prompt": e.prompt, "response": e.response} for e in build(seed)["sft"]]


def train_prompts(seed: int = 0) -> list[dict[str, str]]:
    """{prompt} rows for preference labeling and PPO (disjoint from SFT and eval)."""
    return [{"prompt": e.prompt} for e in build(seed)["train"]]


def eval_prompts(seed: int = 0) -> list[dict[str, str]]:
    """{prompt} rows held out from every training stage."""
    return [{"prompt": e.prompt} for e in build(seed)["eval"]]


# file name -> (split, fields written)
FILES = {
    "warm_sft.jsonl": ("sft", ("prompt", "response")),
    "warm_sft_eval.jsonl": ("eval", ("prompt", "response")),  # demonstrations on the eval prompts: SFT eval loss
    # the topic travels with each prompt to the gold judge (labelers.warm_and_helpful): relevance is judged per topic
    "warm_prompts_train.jsonl": ("train", ("prompt", "topic")),
    "warm_prompts_eval.jsonl": ("eval", ("prompt", "topic")),
}


def write_all(out_dir: str | Path, seed: int = 0) -> dict[str, int]:
    """Write every file in FILES under out_dir; returns rows written per file name."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    splits = build(seed)
    counts = {}
    for name, (split, fields) in FILES.items():
        rows = [{f: getattr(e, f) for f in fields} for e in splits[split]]
        lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        (out / name).write_text(lines, encoding="utf-8", newline="\n")
        counts[name] = len(rows)
    return counts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m examples.warm.warm_data", description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", help="folder to write the JSONL files into")
    parser.add_argument("--seed", type=int, default=0, help="generator seed (same seed, same bytes)")
    args = parser.parse_args(argv)
    for name, n in write_all(args.out_dir, args.seed).items():
        print(f"{Path(args.out_dir) / name}: {n} rows")


if __name__ == "__main__":
    main()
